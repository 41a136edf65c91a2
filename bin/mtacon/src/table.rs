//! Fixed-width text tables for the console's views: a header, then a row per item, each
//! cell padded to its column as `format!` pads `{:<w}` and `{:>w}`.

use std::fmt::{Display, Write as _};

/// One column: the text before it, its width, and whether it is right-aligned.
struct Col {
    gap: String,
    width: usize,
    right: bool,
}

/// A table being written: its columns and the text so far.
pub struct Table {
    cols: Vec<Col>,
    pub out: String,
}

impl Table {
    /// A table laid out as `layout` says, in `format!`'s own words (`"{:<10} {:>8}  {}"`:
    /// a column of 10 to the left, one of 8 to the right, then the rest as it is), that
    /// starts with its header line: the column titles in one string, `|` between them
    /// (`"Name|N|Note"`), so a view's header reads as one line.
    pub fn new(layout: &str, header: &str) -> Table {
        let mut cols = Vec::new();
        let mut rest = layout;
        while let Some(open) = rest.find('{') {
            let close = open + rest[open..].find('}').expect("a column ends with }");
            let spec = &rest[open + 1..close];
            let (right, width) = match spec.strip_prefix(':') {
                Some(s) => (s.starts_with('>'), s[1..].parse().expect("a column width")),
                None => (false, 0),
            };
            let gap = rest[..open].to_string();
            cols.push(Col { gap, width, right });
            rest = &rest[close + 1..];
        }
        let mut table = Table {
            cols,
            out: String::new(),
        };
        let titles: Vec<&str> = header.split('|').collect();
        let cells: Vec<&dyn Display> = titles.iter().map(|h| h as &dyn Display).collect();
        table.row(&cells);
        table
    }

    /// One row, a cell per column.
    pub fn row(&mut self, cells: &[&dyn Display]) {
        for (col, cell) in self.cols.iter().zip(cells) {
            self.out.push_str(&col.gap);
            let w = col.width;
            let _ = if col.right {
                write!(self.out, "{cell:>w$}")
            } else {
                write!(self.out, "{cell:<w$}")
            };
        }
        self.out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_padded_like_format() {
        let mut t = Table::new("{:<6} {:>4}  {}", "Name|N|Note");
        t.row(&[&"ab", &12, &"x y"]);
        let want = format!(
            "{:<6} {:>4}  {}\n{:<6} {:>4}  {}\n",
            "Name", "N", "Note", "ab", 12, "x y"
        );
        assert_eq!(t.out, want);
    }
}
