//! Mail addresses (RFC 5321 `Mailbox`): a local part and a domain.
//!
//! Parsing here is the one place that decides what an address is. The local part is
//! either a dot-string (`john.smith`) or a quoted string (`"john@smith"`), so an `@`
//! inside quotes never splits the address. Source routes (`@a,@b:user@c`), `%`-hacks
//! and `!`-paths are not addresses: `%` and `!` are legal local-part characters, but
//! `Address::is_routing_hack` lets the relay check refuse them.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A domain name (lower-cased, without a trailing dot) or an address literal (`[127.0.0.1]`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Domain(String);

impl Domain {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `[1.2.3.4]` or `[IPv6:…]`.
    pub fn is_address_literal(&self) -> bool {
        self.0.starts_with('[')
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Domain({})", self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address is empty")]
    Empty,
    #[error("`{0}` has no `@domain`")]
    NoDomain(String),
    #[error("`{0}` has an invalid local part")]
    BadLocalPart(String),
    #[error("`{0}` has an invalid domain")]
    BadDomain(String),
    #[error("`{0}` is longer than RFC 5321 allows")]
    TooLong(String),
    #[error("`{0}` uses a source route, which is not accepted")]
    SourceRoute(String),
}

impl FromStr for Domain {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.strip_suffix('.').unwrap_or(s);
        if trimmed.is_empty() || trimmed.len() > 255 {
            return Err(AddressError::BadDomain(s.to_string()));
        }
        if let Some(inner) = trimmed.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| AddressError::BadDomain(s.into()))?;
            let ok = if let Some(v6) = inner.strip_prefix("IPv6:") {
                v6.parse::<std::net::Ipv6Addr>().is_ok()
            } else {
                inner.parse::<std::net::Ipv4Addr>().is_ok()
            };
            return if ok {
                Ok(Domain(trimmed.to_string()))
            } else {
                Err(AddressError::BadDomain(s.into()))
            };
        }
        for label in trimmed.split('.') {
            let valid_chars = label
                .chars()
                .all(|c| c.is_alphanumeric() || c == '-' || !c.is_ascii());
            if label.is_empty()
                || label.len() > 63
                || !valid_chars
                || label.starts_with('-')
                || label.ends_with('-')
            {
                return Err(AddressError::BadDomain(s.to_string()));
            }
        }
        Ok(Domain(trimmed.to_lowercase()))
    }
}

/// An RFC 5321 mailbox. The local part keeps its case (it is the receiving system's to
/// interpret); the domain is lower-cased.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Address {
    local: String,
    domain: Domain,
}

impl Address {
    pub fn new(local: &str, domain: Domain) -> Result<Address, AddressError> {
        if !is_valid_local_part(local) {
            return Err(AddressError::BadLocalPart(local.to_string()));
        }
        Ok(Address {
            local: local.to_string(),
            domain,
        })
    }

    /// The local part as written (a quoted local part keeps its quotes).
    pub fn local_part(&self) -> &str {
        &self.local
    }

    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// The local part with quoting removed, as a mailbox name is compared.
    pub fn local_part_unquoted(&self) -> String {
        unquote(&self.local)
    }

    /// True for the old ways of asking a server to relay through a local-looking address:
    /// `user%remote@local`, `remote!user@local`, and `"user@remote"@local`.
    pub fn is_routing_hack(&self) -> bool {
        let bare = self.local_part_unquoted();
        bare.contains('%') || bare.contains('!') || bare.contains('@')
    }

    /// Needs SMTPUTF8 to be carried (RFC 6531).
    pub fn is_utf8(&self) -> bool {
        !self.local.is_ascii() || !self.domain.0.is_ascii()
    }

    /// The form used to look an address up in the directory: unquoted local part lower-cased.
    pub fn lookup_key(&self) -> String {
        format!(
            "{}@{}",
            self.local_part_unquoted().to_lowercase(),
            self.domain
        )
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({self})")
    }
}

impl FromStr for Address {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(AddressError::Empty);
        }
        if s.len() > 254 + 64 {
            return Err(AddressError::TooLong(s.to_string()));
        }
        if s.starts_with('@') {
            return Err(AddressError::SourceRoute(s.to_string()));
        }
        let split = local_part_end(s).ok_or_else(|| AddressError::BadLocalPart(s.to_string()))?;
        let (local, rest) = s.split_at(split);
        let domain = rest
            .strip_prefix('@')
            .ok_or_else(|| AddressError::NoDomain(s.to_string()))?;
        if local.len() > 64 {
            return Err(AddressError::TooLong(s.to_string()));
        }
        if !is_valid_local_part(local) {
            return Err(AddressError::BadLocalPart(s.to_string()));
        }
        let domain: Domain = domain
            .parse()
            .map_err(|_| AddressError::BadDomain(s.to_string()))?;
        Ok(Address {
            local: local.to_string(),
            domain,
        })
    }
}

/// Index just past the local part: the end of a quoted string, or the last `@` otherwise is
/// wrong (`user@remote@local` must not parse), so the first `@` outside quotes.
fn local_part_end(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    if bytes.first() == Some(&b'"') {
        let mut i = 1;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 2,
                b'"' => return Some(i + 1),
                _ => i += 1,
            }
        }
        None
    } else {
        Some(s.find('@').unwrap_or(s.len()))
    }
}

const ATEXT_SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~";

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || ATEXT_SPECIALS.contains(c) || !c.is_ascii()
}

fn is_valid_local_part(local: &str) -> bool {
    if local.is_empty() {
        return false;
    }
    if local.starts_with('"') {
        if local.len() < 2 || !local.ends_with('"') {
            return false;
        }
        let inner = &local[1..local.len() - 1];
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(n) if (' '..='~').contains(&n) => {}
                    _ => return false,
                },
                '"' => return false,
                c if c.is_ascii_control() => return false,
                _ => {}
            }
        }
        true
    } else {
        local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
    }
}

fn unquote(local: &str) -> String {
    match local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        out.push(n);
                    }
                } else {
                    out.push(c);
                }
            }
            out
        }
        None => local.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_address() {
        let a: Address = "John.Smith@Example.COM".parse().unwrap();
        assert_eq!(a.local_part(), "John.Smith");
        assert_eq!(a.domain().as_str(), "example.com");
        assert_eq!(a.to_string(), "John.Smith@example.com");
        assert_eq!(a.lookup_key(), "john.smith@example.com");
    }

    #[test]
    fn quoted_local_part_is_not_split_on_at() {
        let a: Address = "\"user@remote\"@local".parse().unwrap();
        assert_eq!(a.domain().as_str(), "local");
        assert_eq!(a.local_part_unquoted(), "user@remote");
        assert!(a.is_routing_hack());
    }

    #[test]
    fn rejects_double_at_and_source_route() {
        assert!("user@remote@local".parse::<Address>().is_err());
        assert!(matches!(
            "@a,@b:user@c".parse::<Address>(),
            Err(AddressError::SourceRoute(_))
        ));
        assert!("user".parse::<Address>().is_err());
        assert!("a..b@c".parse::<Address>().is_err());
    }

    #[test]
    fn routing_hacks_are_flagged() {
        assert!("user%remote@local"
            .parse::<Address>()
            .unwrap()
            .is_routing_hack());
        assert!("remote!user@local"
            .parse::<Address>()
            .unwrap()
            .is_routing_hack());
        assert!(!"user@local".parse::<Address>().unwrap().is_routing_hack());
    }

    #[test]
    fn trailing_dot_and_literals() {
        let a: Address = "u@Example.com.".parse().unwrap();
        assert_eq!(a.domain().as_str(), "example.com");
        let b: Address = "u@[127.0.0.9]".parse().unwrap();
        assert!(b.domain().is_address_literal());
        assert!("u@[999.0.0.1]".parse::<Address>().is_err());
    }

    #[test]
    fn utf8_local_part() {
        let a: Address = "用户@localhost".parse().unwrap();
        assert!(a.is_utf8());
    }
}
