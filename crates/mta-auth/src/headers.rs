//! Header scanning without a full MIME parse: the header block of a message, one field's
//! value, the domain of an address, and the removal of forged Authentication-Results.

/// The header fields of `content` in order: `(start, end)` byte ranges of each whole field
/// (name, colon, value, folded lines and the final CRLF), up to the empty line.
pub(crate) fn fields(content: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < content.len() {
        if content[pos..].starts_with(b"\r\n") || content[pos] == b'\n' {
            break; // the empty line: end of the header
        }
        let start = pos;
        loop {
            match memchr_nl(&content[pos..]) {
                Some(i) => pos += i + 1,
                None => {
                    pos = content.len();
                    break;
                }
            }
            // A line starting with white space continues the field (RFC 5322 2.2.3).
            if pos >= content.len() || !matches!(content[pos], b' ' | b'\t') {
                break;
            }
        }
        out.push((start, pos));
    }
    out
}

fn memchr_nl(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

/// The field's name if `field` is `Name: value`.
fn field_name(field: &[u8]) -> Option<&[u8]> {
    let colon = field.iter().position(|&c| c == b':')?;
    let name = &field[..colon];
    (!name.is_empty() && name.iter().all(|c| c.is_ascii_graphic())).then_some(name)
}

/// The unfolded value of the first `name` field.
pub(crate) fn first_value(content: &[u8], name: &str) -> Option<String> {
    fields(content).into_iter().find_map(|(s, e)| {
        let f = &content[s..e];
        let n = field_name(f)?;
        if !n.eq_ignore_ascii_case(name.as_bytes()) {
            return None;
        }
        let v = String::from_utf8_lossy(&f[n.len() + 1..]);
        Some(v.replace("\r\n", "").replace('\n', "").trim().to_string())
    })
}

/// How many `name` fields the header of `content` has.
pub(crate) fn count(content: &[u8], name: &str) -> usize {
    fields(content)
        .into_iter()
        .filter(|&(s, e)| {
            field_name(&content[s..e]).is_some_and(|n| n.eq_ignore_ascii_case(name.as_bytes()))
        })
        .count()
}

/// The domain of the (first) address in an address header value such as
/// `"Ann" <ann@Example.COM>` or `ann@example.com (Ann)`, lower-cased.
pub fn header_domain(value: &str) -> Option<String> {
    let addr = match (value.rfind('<'), value.rfind('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.split([',', '(']).next().unwrap_or(value),
    };
    let domain = addr.trim().rsplit_once('@')?.1.trim().trim_end_matches('.');
    (!domain.is_empty()
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
    .then(|| domain.to_ascii_lowercase())
}

/// `content` without its Authentication-Results fields whose authserv-id is `hostname`
/// (case-insensitive), or `None` if it has none. Such a header arriving from outside is a
/// forgery: only we write results under our name (RFC 8601 section 5).
pub fn strip_forged_results(content: &[u8], hostname: &str) -> Option<Vec<u8>> {
    let forged: Vec<(usize, usize)> = fields(content)
        .into_iter()
        .filter(|&(s, e)| {
            let f = &content[s..e];
            let Some(n) = field_name(f) else {
                return false;
            };
            if !n.eq_ignore_ascii_case(b"authentication-results") {
                return false;
            }
            let value = String::from_utf8_lossy(&f[n.len() + 1..]);
            authserv_id(&value).eq_ignore_ascii_case(hostname)
        })
        .collect();
    if forged.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(content.len());
    let mut pos = 0;
    for (s, e) in forged {
        out.extend_from_slice(&content[pos..s]);
        pos = e;
    }
    out.extend_from_slice(&content[pos..]);
    Some(out)
}

/// The authserv-id of an Authentication-Results value: its first token, before `;`, white
/// space, or a comment.
fn authserv_id(value: &str) -> &str {
    let v = value.trim_start();
    let end = v
        .find(|c: char| c == ';' || c == '(' || c.is_whitespace())
        .unwrap_or(v.len());
    &v[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_domain() {
        assert_eq!(
            header_domain("\"Ann\" <ann@Example.COM>").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            header_domain("ann@example.com (Ann)").as_deref(),
            Some("example.com")
        );
        assert_eq!(header_domain("no address"), None);
    }

    #[test]
    fn folded_values() {
        let m = b"Subject: a\r\nFrom: Ann\r\n <ann@x.test>\r\nTo: b@y\r\n\r\nFrom: body@z\r\n";
        assert_eq!(first_value(m, "from").as_deref(), Some("Ann <ann@x.test>"));
        assert_eq!(fields(m).len(), 3);
    }

    #[test]
    fn forged_results_removed_others_kept() {
        let m = b"Received: x\r\nAuthentication-Results: mta.test; spf=pass\r\n smtp.mailfrom=a@b\r\nauthentication-results: other.test; dkim=pass\r\nAuthentication-Results:MTA.TEST(c); dmarc=pass\r\nFrom: a@b\r\n\r\nAuthentication-Results: mta.test; body stays\r\n";
        let out = strip_forged_results(m, "mta.test").expect("forged headers found");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Received: x\r\nauthentication-results: other.test; dkim=pass\r\nFrom: a@b\r\n\r\nAuthentication-Results: mta.test; body stays\r\n"
        );
        assert!(strip_forged_results(b"From: a@b\r\n\r\n", "mta.test").is_none());
    }
}
