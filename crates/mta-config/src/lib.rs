//! mta-config — every configuration key of smtpmta, its type, default and meaning, in one place.
//!
//! Reads: the main file (`etc/smtpmta.toml`) and the directory of users (`etc/directory.toml`,
//! key `directory`). Writes: nothing — loading touches nothing on disk. Each task reads its typed
//! section (`[inbound]`, `[outbound]`, `[dns]`, `[debug]`, `[metrics]`), never a raw table.
//!
//! Every error names the file, the line and the dotted key
//! (``/abs/etc/smtpmta.toml:7: key `inbound.max_handlers`: …``). docs/CONFIG.md describes every
//! key; the doc comments on the fields below say the same and are the source of truth.
//!
//! Value syntaxes: durations are an integer number of seconds or a string such as `"500ms"`,
//! `"30s"`, `"5m"`, `"1h"`, `"2d"`, `"1h30m"`; sizes are an integer number of bytes or a string
//! with a binary unit (`"10K"`, `"25M"`, `"25MiB"`, `"1G"`; K = 1024).

mod cluster;
mod debug;
mod directory;
mod dkim;
mod dnslist;
mod error;
mod lmtp;
mod milter;
mod run_as;
mod shaping;
mod tls;
mod values;

use std::net::{IpAddr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use mta_types::rate::Rate;
use mta_types::{BareNewline, Domain};
use serde::Deserialize;

pub use cluster::{ClusterConfig, PeerPassword, RedisUrl};
pub use debug::DebugKnobs;
pub use directory::{Directory, User, MAX_ALIAS_DEPTH};
pub use dkim::{DkimAlgorithm, DkimKeyConfig, DEFAULT_SIGNED_HEADERS};
pub use dnslist::{AddrFilter, DnsListSite, SiteFault};
pub use error::{ConfigError, ValueError};
pub use lmtp::{LmtpConfig, UserLmtp};
pub use milter::{MilterAddress, MilterConfig, MilterDefault, LISTENER_NAMES};
pub use run_as::RunAs;
pub use shaping::{LocalLimits, OnReply, ReplyAction, Scoped, ShapingRule};
pub use tls::{OutboundTls, TlsConfig, TlsFiles, TlsPolicy};
pub use values::{parse_duration, parse_size};

use error::{Seg, Source};
use values::{Cidr, DomainValue};

/// The whole configuration, as loaded by `Config::load`.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The config file as loaded, absolute (canonicalized).
    pub path: PathBuf,
    /// `hostname`: the name this MTA greets with and writes in Received headers.
    /// Default `"localhost"`.
    pub hostname: String,
    /// `data_dir`: holds `run/`, `spool/`, `store/` and the maildirs. Absolute; a relative value
    /// is relative to the config file's folder. Default `"var"`.
    pub data_dir: PathBuf,
    /// `local_domains`: mail for these domains is delivered to the directory's users.
    /// At least one. Default `["localhost"]`.
    pub local_domains: Vec<Domain>,
    /// `trusted_networks`: CIDR networks whose clients may relay to any domain; a bare address
    /// means that one host. Default `["127.0.0.0/8", "::1/128"]`.
    pub trusted_networks: Vec<ipnet::IpNet>,
    /// `directory`: the directory file. Absolute; relative to the config file's folder.
    /// Default `"directory.toml"`.
    pub directory_path: PathBuf,
    /// The users and aliases, loaded from `directory_path` by `Config::load`.
    pub directory: Directory,
    /// `hold_undeliverable`: a message whose delivery fails permanently (5.x.x: a remote
    /// 5xx, a local user unknown after acceptance, a null MX) is held with its reason
    /// instead of bounced, until the operator runs `release` (retry) or `bounce` (send the
    /// report now). Changeable at runtime with `set config`. Default false.
    pub hold_undeliverable: bool,
    /// `tracking_days`: how long the message history (`show message`, `track`) is kept
    /// after a message arrived; 0 keeps none. Default 7.
    pub tracking_days: u32,
    /// `[inbound]`: isesctl and its session handlers.
    pub inbound: InboundConfig,
    /// `[outbound]`: osesctl and its session handlers.
    pub outbound: OutboundConfig,
    /// `[dns]`: the resolver used for MX and address lookups.
    pub dns: DnsConfig,
    /// `[debug]`: logging knobs, changeable at runtime with `set config`.
    pub debug: DebugKnobs,
    /// `[metrics]`: the supervisor's Prometheus endpoint and status page.
    pub metrics: MetricsConfig,
    /// `[[dkim]]`: the keys outgoing mail is signed with (see `dkim.rs`). Default none.
    pub dkim: Vec<DkimKeyConfig>,
    /// `[[milter]]`: the mail filters inbound sessions consult, in order (see `milter.rs`).
    /// Default none.
    pub milter: Vec<MilterConfig>,
    /// `[tls]`: the inbound certificate.
    pub tls: TlsConfig,
    /// `[lmtp]`: local delivery over LMTP (see `lmtp.rs`).
    pub lmtp: LmtpConfig,
    /// `user` (and `group`): the account every task runs as once the supervisor has bound
    /// the listeners; resolved from the system's user database at load (see `run_as.rs`).
    /// Default none: the suite runs as whoever started it, as before.
    pub run_as: Option<RunAs>,
    /// `[cluster]`: this node's place in a fleet (see `cluster.rs`). Default: a single node.
    pub cluster: ClusterConfig,
}

/// `[metrics]` — the HTTP endpoint the supervisor serves: `/metrics` in the Prometheus
/// text format.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `listen`: `ip:port` to serve on, or `""` for no endpoint. Anyone who can connect can
    /// read the queue's destinations, so keep it on loopback or behind a firewall.
    /// Default `"127.0.0.1:9025"`.
    #[serde(deserialize_with = "values::optional_socket")]
    pub listen: Option<SocketAddr>,
    /// `top_destinations`: destinations listed one by one in
    /// `smtpmta_destination_messages` (those with the most messages waiting). Default 20.
    pub top_destinations: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9025))),
            top_destinations: 20,
        }
    }
}

/// `[inbound]` — the SMTP listener (isesctl) and its session handlers.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InboundConfig {
    /// `listen`: addresses to accept SMTP on (`ip:port`, `[ipv6]:port`).
    /// Default `["127.0.0.1:2525"]`.
    #[serde(deserialize_with = "values::socket_list")]
    pub listen: Vec<SocketAddr>,
    /// `max_handlers`: most concurrent inbound sessions; at the maximum isesctl stops accepting
    /// until one ends. At least 1. Default 100 (Domino's default was 3).
    #[serde(deserialize_with = "values::at_least_one")]
    pub max_handlers: usize,
    /// `max_message_size`: largest message accepted, in bytes (advertised in EHLO `SIZE`);
    /// an integer or a size string (`"25M"`). Default 26_214_400 (25 MiB).
    #[serde(deserialize_with = "values::size")]
    pub max_message_size: u64,
    /// `max_recipients`: most RCPT TO per message. Default 1000.
    pub max_recipients: usize,
    /// `max_line_length`: hard cap for one DATA line in bytes. Default 65536.
    pub max_line_length: usize,
    /// `command_timeout`: wait for the next command. Default 300s.
    #[serde(deserialize_with = "values::duration")]
    pub command_timeout: Duration,
    /// `data_timeout`: wait for each read during DATA. Default 600s.
    #[serde(deserialize_with = "values::duration")]
    pub data_timeout: Duration,
    /// `session_timeout`: longest whole session. Default 3600s.
    #[serde(deserialize_with = "values::duration")]
    pub session_timeout: Duration,
    /// `max_errors`: protocol errors before the session is dropped. Default 10.
    pub max_errors: u32,
    /// `max_hops`: Received headers before the message goes Dead (mail loop). Default 25.
    pub max_hops: u32,
    /// `submission_listen`: RFC 6409 submission (port-587 style): STARTTLS then AUTH
    /// required before MAIL. Default `["127.0.0.1:2587"]`; `[]` for none.
    #[serde(deserialize_with = "values::socket_list")]
    pub submission_listen: Vec<SocketAddr>,
    /// `submissions_listen`: RFC 8314 implicit TLS (port-465 style); AUTH required.
    /// Default `["127.0.0.1:2465"]`; `[]` for none.
    #[serde(deserialize_with = "values::socket_list")]
    pub submissions_listen: Vec<SocketAddr>,
    /// `max_auth_failures`: failed AUTH attempts allowed from one IP address within
    /// `auth_failure_window`; beyond that AUTH is answered `454 4.7.0` until the window has
    /// passed. Default 5.
    pub max_auth_failures: u32,
    /// `auth_failure_window`: see `max_auth_failures`. Default 10m.
    #[serde(deserialize_with = "values::duration")]
    pub auth_failure_window: Duration,
    /// `bare_newline`: a bare LF (no CR before it) in message content: `"normalize"` stores
    /// it as CRLF, `"reject"` refuses the message with `554 5.6.0` (Postfix 3.9's
    /// `smtpd_forbid_bare_newline`). Either way only CRLF.CRLF ends DATA (no SMTP
    /// smuggling), and a bare CR is refused. Default `"normalize"`.
    pub bare_newline: BareNewline,
    /// `dmarc_reject`: a message failing DMARC whose From domain publishes `p=reject` gets
    /// `550 5.7.1` at the end of DATA (and is logged); false: it is accepted with
    /// `dmarc=fail` in its Authentication-Results. Default false.
    pub dmarc_reject: bool,
    /// `verify_trusted`: run the SPF, DKIM and DMARC checks on mail from
    /// `trusted_networks` too. Default false: trusted clients are our own submitters (like
    /// OpenDKIM's and OpenDMARC's internal hosts), and their mail gets no
    /// Authentication-Results.
    pub verify_trusted: bool,
    /// `shutdown_grace`: when isesctl stops (`tell smtpmta quit`, `tell isesctl restart`,
    /// a reload that restarts it), sessions in progress may go on this long; then each
    /// one left is answered `421 4.3.2` and closed. Default 30s.
    #[serde(deserialize_with = "values::duration")]
    pub shutdown_grace: Duration,
    /// `dnsbl`: DNS blocklists asked about each client of the `listen` (port 25) listener
    /// that is not in `trusted_networks`, in Postfix's `postscreen_dnsbl_sites` syntax
    /// `zone[=filter][*weight]` (see `dnslist.rs`). Default `[]`.
    #[serde(deserialize_with = "dnslist::site_list")]
    pub dnsbl: Vec<DnsListSite>,
    /// `dnswl`: DNS allowlists, same syntax, asked with the blocklists; their (negative)
    /// weights add to the same score. Default `[]`.
    #[serde(deserialize_with = "dnslist::site_list")]
    pub dnswl: Vec<DnsListSite>,
    /// `dnsbl_threshold`: a client whose summed weights reach this gets `554 5.7.1` at
    /// every command. Default 1.
    pub dnsbl_threshold: i32,
    /// `greet_pause`: how long untrusted clients of the `listen` listener wait for the
    /// banner; one that sends anything meanwhile gets `554 5.5.1` and is dropped
    /// (postscreen's pregreet test). `"0s"`: banner at once, no test. Default `"0s"`.
    #[serde(deserialize_with = "values::duration")]
    pub greet_pause: Duration,
    /// `forbid_unauth_pipelining`: an untrusted client of the `listen` listener that sends
    /// more after EHLO or HELO before their reply, or pipelines at all after HELO (where
    /// PIPELINING is not offered), gets `554 5.5.0` and is dropped (Postfix 3.9's key of
    /// the same name). Default true.
    pub forbid_unauth_pipelining: bool,
    /// `max_connections_per_client`: most simultaneous sessions from one client (an IPv4
    /// address, or an IPv6 /64), trusted_networks exempt; beyond: `421 4.7.0` and close.
    /// 0: no limit. Default 50 (Postfix's `smtpd_client_connection_count_limit`).
    /// Each per-client limit is counted across the fleet with `[cluster] redis`, unless
    /// written `"local:…"` ([`Scoped`]).
    #[serde(deserialize_with = "shaping::client_count")]
    pub max_connections_per_client: Scoped<u32>,
    /// `max_connection_rate_per_client`: new sessions per client per period, e.g.
    /// `"60/min"` (a GCRA allowing the whole count at once, then one per period/count);
    /// `""`: no limit. Default `""`.
    #[serde(deserialize_with = "shaping::client_rate")]
    pub max_connection_rate_per_client: Scoped<Option<Rate>>,
    /// `max_message_rate_per_client`: transactions per client per period (counted at
    /// their first RCPT), as above. Default `""`.
    #[serde(deserialize_with = "shaping::client_rate")]
    pub max_message_rate_per_client: Scoped<Option<Rate>>,
    /// `max_recipient_rate_per_client`: RCPT commands per client per period, as above.
    /// Default `""`.
    #[serde(deserialize_with = "shaping::client_rate")]
    pub max_recipient_rate_per_client: Scoped<Option<Rate>>,
}

impl Default for InboundConfig {
    fn default() -> Self {
        InboundConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 2525))],
            max_handlers: 100,
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 1000,
            max_line_length: 65536,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            session_timeout: Duration::from_secs(3600),
            max_errors: 10,
            max_hops: 25,
            submission_listen: vec![SocketAddr::from(([127, 0, 0, 1], 2587))],
            submissions_listen: vec![SocketAddr::from(([127, 0, 0, 1], 2465))],
            max_auth_failures: 5,
            auth_failure_window: Duration::from_secs(600),
            bare_newline: BareNewline::Normalize,
            dmarc_reject: false,
            verify_trusted: false,
            shutdown_grace: Duration::from_secs(30),
            dnsbl: Vec::new(),
            dnswl: Vec::new(),
            dnsbl_threshold: 1,
            greet_pause: Duration::ZERO,
            forbid_unauth_pipelining: true,
            max_connections_per_client: Scoped::shared(50),
            max_connection_rate_per_client: Scoped::shared(None),
            max_message_rate_per_client: Scoped::shared(None),
            max_recipient_rate_per_client: Scoped::shared(None),
        }
    }
}

/// `[outbound]` — Domain List Processing (osesctl) and the outbound session handlers.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundConfig {
    /// `max_handlers`: most concurrent outbound sessions. At least 1. Default 20.
    #[serde(deserialize_with = "values::at_least_one")]
    pub max_handlers: usize,
    /// `relay_host`: send all non-local mail through this `host:port` (host a name, an IPv4
    /// address or `[ipv6]`). Empty or absent: look up MX records. Default `""`.
    #[serde(deserialize_with = "values::relay_host")]
    pub relay_host: Option<String>,
    /// `port`: port used for MX hosts. Default 25.
    pub port: u16,
    /// `retry`: waits between delivery attempts; the last one repeats. Non-empty.
    /// Default `["1m", "5m", "15m", "30m", "1h", "2h", "4h"]`.
    #[serde(deserialize_with = "values::duration_list")]
    pub retry: Vec<Duration>,
    /// `queue_lifetime`: after this a message still undelivered is returned (DSN). Default 5d.
    #[serde(deserialize_with = "values::duration")]
    pub queue_lifetime: Duration,
    /// `delay_warning`: after this the sender gets a delay notice. Default 4h.
    #[serde(deserialize_with = "values::duration")]
    pub delay_warning: Duration,
    /// `connect_timeout`: TCP connect to a next hop. Default 30s.
    #[serde(deserialize_with = "values::duration")]
    pub connect_timeout: Duration,
    /// `command_timeout`: wait for each reply of the remote server. Default 300s.
    #[serde(deserialize_with = "values::duration")]
    pub command_timeout: Duration,
    /// `max_messages_per_list`: most messages in one Domain List. Default 100.
    pub max_messages_per_list: usize,
    /// `max_messages_per_session`: most messages sent over one connection. Default 1000.
    pub max_messages_per_session: usize,
    /// `[outbound.tls]`: STARTTLS to the next hop.
    pub tls: OutboundTls,
    /// `ip_preference`: the order of a next hop's addresses: `"ipv6"` (AAAA first, then
    /// A), `"ipv4"` (A first), `"ipv4-only"`, `"ipv6-only"`. Default `"ipv6"`.
    pub ip_preference: IpPreference,
    /// `[[outbound.shaping]]`: traffic shaping per destination site (first match wins).
    /// Default: none (no limits).
    pub shaping: Vec<ShapingRule>,
}

/// `[outbound] ip_preference`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum IpPreference {
    #[default]
    #[serde(rename = "ipv6")]
    Ipv6,
    #[serde(rename = "ipv4")]
    Ipv4,
    #[serde(rename = "ipv4-only")]
    Ipv4Only,
    #[serde(rename = "ipv6-only")]
    Ipv6Only,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        let m = |n: u64| Duration::from_secs(60 * n);
        OutboundConfig {
            max_handlers: 20,
            relay_host: None,
            port: 25,
            retry: vec![m(1), m(5), m(15), m(30), m(60), m(120), m(240)],
            queue_lifetime: Duration::from_secs(5 * 86400),
            delay_warning: m(240),
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(300),
            max_messages_per_list: 100,
            max_messages_per_session: 1000,
            tls: OutboundTls::default(),
            ip_preference: IpPreference::default(),
            shaping: Vec::new(),
        }
    }
}

/// `[dns]` — the resolver for MX and A/AAAA lookups.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// `nameservers`: servers to ask (`ip`, `ip:port`, `[ipv6]:port`; port 53 if omitted).
    /// Empty: the system's /etc/resolv.conf. Default `[]`.
    #[serde(deserialize_with = "values::nameserver_list")]
    pub nameservers: Vec<SocketAddr>,
    /// `timeout`: per query. Default 5s.
    #[serde(deserialize_with = "values::duration")]
    pub timeout: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(5),
        }
    }
}

/// The file as written; turned into `Config` by `Config::load`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    hostname: String,
    data_dir: String,
    local_domains: Vec<DomainValue>,
    trusted_networks: Vec<Cidr>,
    directory: String,
    hold_undeliverable: bool,
    tracking_days: u32,
    inbound: InboundConfig,
    outbound: OutboundConfig,
    dns: DnsConfig,
    debug: DebugKnobs,
    metrics: MetricsConfig,
    dkim: Vec<dkim::RawDkim>,
    milter: Vec<milter::RawMilter>,
    tls: tls::RawTls,
    lmtp: lmtp::RawLmtp,
    user: String,
    group: String,
    cluster: cluster::RawCluster,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            hostname: "localhost".into(),
            data_dir: "var".into(),
            local_domains: vec![DomainValue("localhost".parse().expect("valid domain"))],
            trusted_networks: vec![
                Cidr("127.0.0.0/8".parse().expect("valid CIDR")),
                Cidr("::1/128".parse().expect("valid CIDR")),
            ],
            directory: "directory.toml".into(),
            hold_undeliverable: false,
            tracking_days: 7,
            inbound: InboundConfig::default(),
            outbound: OutboundConfig::default(),
            dns: DnsConfig::default(),
            debug: DebugKnobs::default(),
            metrics: MetricsConfig::default(),
            dkim: Vec::new(),
            milter: Vec::new(),
            tls: tls::RawTls::default(),
            lmtp: lmtp::RawLmtp::default(),
            user: String::new(),
            group: String::new(),
            cluster: cluster::RawCluster::default(),
        }
    }
}

impl Config {
    /// Reads the config file and the directory file it names, and validates everything.
    /// Touches nothing on disk (folders are not created).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let shown = absolute(path);
        let text = std::fs::read_to_string(&shown).map_err(|source| ConfigError::Read {
            file: shown.clone(),
            source,
        })?;
        let path = std::fs::canonicalize(&shown).unwrap_or(shown);
        let src = Source {
            file: path.clone(),
            text,
        };
        let raw: RawConfig = toml::from_str(&src.text).map_err(|e| src.toml_error(&e))?;

        check_identity(&src, &raw)?;
        let base = path.parent().unwrap_or(Path::new("/"));
        let resolve = |key: &'static str, value: &str| {
            if value.trim().is_empty() {
                Err(src.error_at(&[Seg::Key(key)], "must not be empty"))
            } else {
                Ok(normalize(&base.join(value)))
            }
        };
        let data_dir = resolve("data_dir", &raw.data_dir)?;
        let directory_path = resolve("directory", &raw.directory)?;
        let local_domains: Vec<Domain> = raw.local_domains.into_iter().map(|d| d.0).collect();

        let directory = match directory::load(&directory_path, &data_dir, &local_domains) {
            Err(ConfigError::Read { file, source }) => {
                return Err(src.error_at(
                    &[Seg::Key("directory")],
                    format!("cannot read `{}`: {source}", file.display()),
                ))
            }
            other => other?,
        };
        let dkim = load_entries::<dkim::RawDkim>(&src, base, raw.dkim)?;
        let milters = load_entries::<milter::RawMilter>(&src, base, raw.milter)?;
        let tls = load_tls(&src, base, &raw.tls)?;
        let lmtp = raw
            .lmtp
            .into_config(|p| normalize(&base.join(p)))
            .map_err(|(key, message)| src.error_at(&[Seg::Key("lmtp"), Seg::Key(key)], message))?;
        let run_as = run_as::resolve(&src, &raw.user, &raw.group)?;
        let cluster = raw.cluster.into_config(base).map_err(|(key, message)| {
            src.error_at(&[Seg::Key("cluster"), Seg::Key(key)], message)
        })?;
        let outbound = load_outbound(&src, base, raw.outbound)?;
        Ok(Config {
            path,
            hostname: raw.hostname,
            data_dir,
            local_domains,
            trusted_networks: raw.trusted_networks.into_iter().map(|c| c.0).collect(),
            directory_path,
            directory,
            hold_undeliverable: raw.hold_undeliverable,
            tracking_days: raw.tracking_days,
            inbound: raw.inbound,
            outbound,
            dns: raw.dns,
            debug: raw.debug,
            metrics: raw.metrics,
            dkim,
            milter: milters,
            tls,
            lmtp,
            run_as,
            cluster,
        })
    }

    /// An error about `[[dkim]]` entry `index` (0-based), key `key`, found after loading
    /// (a key file that is not a usable key): names the file, the entry's line and the key.
    pub fn dkim_error(&self, index: usize, key: &str, message: impl Into<String>) -> ConfigError {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let src = Source {
            file: self.path.clone(),
            text,
        };
        src.error_at(
            &[Seg::Key("dkim"), Seg::Index(index), Seg::Key(key)],
            message.into(),
        )
    }

    /// The `[[dkim]]` key that signs mail from `domain`, with its index.
    pub fn dkim_key_for(&self, domain: &Domain) -> Option<(usize, &DkimKeyConfig)> {
        self.dkim
            .iter()
            .enumerate()
            .find(|(_, k)| &k.domain == domain)
    }

    /// The certificate and key the listeners use: `[tls]`'s, or the self-signed pair under
    /// `data_dir/tls/`.
    pub fn tls_files(&self) -> TlsFiles {
        self.tls
            .files
            .clone()
            .unwrap_or_else(|| TlsConfig::selfsigned(&self.data_dir))
    }

    /// `data_dir/run`: sockets and the pid file.
    pub fn run_dir(&self) -> PathBuf {
        self.data_dir.join("run")
    }

    /// `data_dir/spool`: message contents.
    pub fn spool_dir(&self) -> PathBuf {
        self.data_dir.join("spool")
    }

    /// `data_dir/store`: the sled database.
    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join("store")
    }

    pub fn is_local_domain(&self, d: &Domain) -> bool {
        self.local_domains.contains(d)
    }

    /// Where fleet peers hand mail to this node (`[cluster] peer_address`, else the first
    /// `[inbound] listen` address, with `hostname` for a wildcard one); `""` with no
    /// listener at all.
    pub fn peer_smtp_address(&self) -> String {
        if let Some(addr) = &self.cluster.peer_address {
            return addr.clone();
        }
        match self.inbound.listen.first() {
            Some(a) if a.ip().is_unspecified() => format!("{}:{}", self.hostname, a.port()),
            Some(a) => a.to_string(),
            None => String::new(),
        }
    }

    /// True if `ip` is in `trusted_networks`; an IPv4-mapped IPv6 address (`::ffff:127.0.0.1`)
    /// is also checked as the IPv4 address it carries.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let mapped = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.trusted_networks
            .iter()
            .any(|net| net.contains(&ip) || mapped.is_some_and(|v4| net.contains(&v4)))
    }

    /// Re-reads `directory_path` (for `tell smtpmta refresh`), validated as at load.
    pub fn reload_directory(&self) -> Result<Directory, ConfigError> {
        directory::load(&self.directory_path, &self.data_dir, &self.local_domains).map_err(|e| {
            match e {
                ConfigError::Read { file, source } => ConfigError::Invalid {
                    file: self.path.clone(),
                    line: None,
                    key: Some("directory".into()),
                    message: format!("cannot read `{}`: {source}", file.display()),
                },
                other => other,
            }
        })
    }
}

/// `hostname` is a host name (not an address literal), `local_domains` lists one at least.
fn check_identity(src: &Source, raw: &RawConfig) -> Result<(), ConfigError> {
    if raw.hostname.parse::<Domain>().is_err() || raw.hostname.starts_with('[') {
        return Err(src.error_at(
            &[Seg::Key("hostname")],
            format!("`{}` is not a host name", raw.hostname),
        ));
    }
    if raw.local_domains.is_empty() {
        return Err(src.error_at(
            &[Seg::Key("local_domains")],
            "must list at least one domain",
        ));
    }
    Ok(())
}

/// `[outbound]`: the CA file readable now, the per-domain TLS policies keyed in lower case.
fn load_outbound(
    src: &Source,
    base: &Path,
    mut outbound: OutboundConfig,
) -> Result<OutboundConfig, ConfigError> {
    if let Some(ca) = outbound.tls.ca_file.take() {
        let ca = normalize(&base.join(ca));
        let at = [Seg::Key("outbound"), Seg::Key("tls"), Seg::Key("ca_file")];
        readable(src, &at, &ca)?;
        outbound.tls.ca_file = Some(ca);
    }
    outbound.tls.domains = std::mem::take(&mut outbound.tls.domains)
        .into_iter()
        .map(|(d, p)| (d.to_ascii_lowercase(), p))
        .collect();
    Ok(outbound)
}

/// One entry of an array of tables (`[[dkim]]`, `[[milter]]`).
trait ArrayEntry: Sized {
    type Config;
    /// The array's key.
    const SECTION: &'static str;
    /// Validates one entry (`resolve` makes a path relative to the config file absolute);
    /// `Err` is `(key, message)` for `section[i].key`.
    fn into_config(
        self,
        resolve: impl Fn(&str) -> PathBuf,
    ) -> Result<Self::Config, (&'static str, String)>;
    /// Why `this` cannot be beside `earlier`, an entry before it: the key and the message.
    fn clash(earlier: &Self::Config, this: &Self::Config) -> Option<(&'static str, String)>;
}

/// Every entry of an array of tables made valid, none clashing with one before it.
fn load_entries<E: ArrayEntry>(
    src: &Source,
    base: &Path,
    raw: Vec<E>,
) -> Result<Vec<E::Config>, ConfigError> {
    let mut loaded: Vec<E::Config> = Vec::with_capacity(raw.len());
    for (i, entry) in raw.into_iter().enumerate() {
        let at = |key| [Seg::Key(E::SECTION), Seg::Index(i), Seg::Key(key)];
        let this = (entry.into_config(|p| normalize(&base.join(p))))
            .map_err(|(key, message)| src.error_at(&at(key), message))?;
        if let Some((key, message)) = loaded.iter().find_map(|earlier| E::clash(earlier, &this)) {
            return Err(src.error_at(&at(key), message));
        }
        loaded.push(this);
    }
    Ok(loaded)
}

/// `[tls]`: both paths or neither, each readable now (so a typo fails at start, naming the
/// key and the file).
fn load_tls(src: &Source, base: &Path, raw: &tls::RawTls) -> Result<TlsConfig, ConfigError> {
    let cert = raw.certificate.trim();
    let key = raw.private_key.trim();
    match (cert.is_empty(), key.is_empty()) {
        (true, true) => Ok(TlsConfig { files: None }),
        (false, true) => Err(src.error_at(
            &[Seg::Key("tls"), Seg::Key("certificate")],
            "needs `private_key` as well",
        )),
        (true, false) => Err(src.error_at(
            &[Seg::Key("tls"), Seg::Key("private_key")],
            "needs `certificate` as well",
        )),
        (false, false) => {
            let certificate = normalize(&base.join(cert));
            let private_key = normalize(&base.join(key));
            readable(
                src,
                &[Seg::Key("tls"), Seg::Key("certificate")],
                &certificate,
            )?;
            readable(
                src,
                &[Seg::Key("tls"), Seg::Key("private_key")],
                &private_key,
            )?;
            Ok(TlsConfig {
                files: Some(TlsFiles {
                    certificate,
                    private_key,
                }),
            })
        }
    }
}

fn readable(src: &Source, at: &[Seg<'_>], file: &Path) -> Result<(), ConfigError> {
    std::fs::File::open(file)
        .map(drop)
        .map_err(|e| src.error_at(at, format!("cannot read `{}`: {e}", file.display())))
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        normalize(path)
    } else {
        normalize(&std::env::current_dir().unwrap_or_default().join(path))
    }
}

/// Removes `.` and resolves `..` lexically (the folder need not exist yet).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() && !out.has_root() {
                    out.push(c);
                }
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests;
