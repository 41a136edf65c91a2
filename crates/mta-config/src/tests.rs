//! Loading the shipped defaults, and one test per kind of error: each must name the file,
//! the line and the key.

use super::*;
use std::fs;
use std::net::Ipv6Addr;

const DIRECTORY: &str = r#"[[user]]
name = "postmaster"
addresses = ["postmaster@localhost", "root@localhost"]
maildir = "mail/postmaster"

[aliases]
"abuse@localhost" = ["postmaster@localhost"]
"#;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(config: &str, directory: Option<&str>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("smtpmta.toml"), config).unwrap();
        if let Some(d) = directory {
            fs::write(dir.path().join("directory.toml"), d).unwrap();
        }
        Fixture { dir }
    }
    fn path(&self, name: &str) -> PathBuf {
        fs::canonicalize(self.dir.path()).unwrap().join(name)
    }
    fn load(&self) -> Result<Config, ConfigError> {
        Config::load(&self.dir.path().join("smtpmta.toml"))
    }
    fn err(&self) -> ConfigError {
        self.load().expect_err("should not load")
    }
}

fn config_err(config: &str) -> (ConfigError, PathBuf) {
    let f = Fixture::new(config, Some(DIRECTORY));
    (f.err(), f.path("smtpmta.toml"))
}

fn directory_err(directory: &str) -> (ConfigError, PathBuf) {
    let f = Fixture::new(
        "local_domains = [\"localhost\", \"example.org\"]\n",
        Some(directory),
    );
    (f.err(), f.path("directory.toml"))
}

/// `config`, with the test directory, loaded.
#[track_caller]
fn loaded(config: &str) -> Config {
    Fixture::new(config, Some(DIRECTORY)).load().unwrap()
}

/// Loading `config` fails at `line` of the config file, naming `key` and saying `says`.
#[track_caller]
fn config_fails(config: &str, line: usize, key: &str, says: &str) {
    let (e, file) = config_err(config);
    assert_located(&e, &file, line, key, says);
}

/// The same for the directory file.
#[track_caller]
fn directory_fails(directory: &str, line: usize, key: &str, says: &str) {
    let (e, file) = directory_err(directory);
    assert_located(&e, &file, line, key, says);
}

#[track_caller]
fn assert_located(e: &ConfigError, file: &Path, line: usize, key: &str, says: &str) {
    assert_eq!(e.file(), file, "{e}");
    assert_eq!(e.line(), Some(line), "{e}");
    assert_eq!(e.key(), Some(key), "{e}");
    let text = e.to_string();
    eprintln!("{text}");
    let prefix = format!("{}:{line}: key `{key}`: ", file.display());
    assert!(
        text.starts_with(&prefix),
        "{text}\n  should start with {prefix}"
    );
    assert!(text.contains(says), "{text}\n  should contain {says}");
}

#[test]
fn shipped_default_loads_with_documented_values() {
    let etc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../etc/smtpmta.toml");
    let c = Config::load(&etc).unwrap();
    let root = fs::canonicalize(Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")).unwrap();
    assert_eq!(c.path, root.join("etc/smtpmta.toml"));
    assert_eq!(c.hostname, "localhost");
    assert_eq!(c.data_dir, root.join("var"));
    assert_eq!(c.run_dir(), root.join("var/run"));
    assert_eq!(c.spool_dir(), root.join("var/spool"));
    assert_eq!(c.store_dir(), root.join("var/store"));
    assert!(!c.hold_undeliverable);
    assert_eq!(c.tracking_days, 7);
    assert_eq!(
        c.local_domains,
        vec!["localhost".parse::<Domain>().unwrap()]
    );
    // The shipped file shows the code's true default (IPv6 loopback included).
    assert_eq!(
        c.trusted_networks,
        vec![
            "127.0.0.0/8".parse::<ipnet::IpNet>().unwrap(),
            "::1/128".parse::<ipnet::IpNet>().unwrap()
        ]
    );
    assert_eq!(c.directory_path, root.join("etc/directory.toml"));
    // Every section equals the built-in defaults.
    assert_eq!(c.inbound, InboundConfig::default());
    assert_eq!(c.outbound, OutboundConfig::default());
    assert_eq!(c.dns, DnsConfig::default());
    assert_eq!(c.debug, DebugKnobs::default());
    assert_eq!(c.metrics, MetricsConfig::default());
    assert_eq!(c.inbound.bare_newline, mta_types::BareNewline::Normalize);
    assert_eq!(
        c.metrics.listen,
        Some("127.0.0.1:9025".parse::<SocketAddr>().unwrap())
    );
    assert_eq!(
        c.inbound.listen,
        vec!["127.0.0.1:2525".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(c.inbound.max_message_size, 26_214_400);
    assert_eq!(c.outbound.relay_host, None);
    assert_eq!(c.outbound.port, 25);
    assert_eq!(
        c.outbound.retry.last(),
        Some(&Duration::from_secs(4 * 3600))
    );
    assert_eq!(c.outbound.queue_lifetime, Duration::from_secs(5 * 86400));
    // The shipped directory.
    let pm = c
        .directory
        .user_for(&"ROOT@localhost".parse().unwrap())
        .unwrap();
    assert_eq!(pm.name, "postmaster");
    assert_eq!(pm.maildir, root.join("var/mail/postmaster"));
    assert_eq!(
        c.directory.expand(&"abuse@localhost".parse().unwrap()),
        pm.addresses[..1].to_vec()
    );
    assert_eq!(c.reload_directory().unwrap(), c.directory);
}

#[test]
fn empty_file_gives_built_in_defaults() {
    let f = Fixture::new("", Some(DIRECTORY));
    let c = f.load().unwrap();
    assert_eq!(c.data_dir, f.path("var"));
    assert_eq!(c.directory_path, f.path("directory.toml"));
    assert_eq!(c.trusted_networks.len(), 2);
    assert!(c.is_trusted("::1".parse().unwrap()));
    assert_eq!(c.inbound.max_handlers, 100);
    assert!(!c.hold_undeliverable);
    assert_eq!(c.tracking_days, 7);
    let c = loaded("hold_undeliverable = true\ntracking_days = 0\n");
    assert!(c.hold_undeliverable);
    assert_eq!(c.tracking_days, 0);
}

#[test]
fn relative_and_absolute_data_dir() {
    let f = Fixture::new("data_dir = \"./a/../data\"\n", Some(DIRECTORY));
    let c = f.load().unwrap();
    assert_eq!(c.data_dir, f.path("data"));
    assert_eq!(c.directory.users[0].maildir, f.path("data/mail/postmaster"));
    assert!(!c.data_dir.exists(), "loading creates nothing");

    let f = Fixture::new("data_dir = \"/srv/mta\"\n", Some(DIRECTORY));
    assert_eq!(f.load().unwrap().data_dir, PathBuf::from("/srv/mta"));

    // A config path given relative to the working directory still resolves to absolute paths.
    let c = Config::load(Path::new("../../etc/smtpmta.toml")).unwrap();
    assert!(c.path.is_absolute() && c.data_dir.is_absolute() && c.directory_path.is_absolute());
}

#[test]
fn values_with_units_and_relay_host() {
    let f = Fixture::new(
        "[inbound]\nmax_message_size = \"10KiB\"\ncommand_timeout = 45\ndata_timeout = \"1h30m\"\n\
         [outbound]\nrelay_host = \"[2001:db8::1]:587\"\nretry = [\"500ms\"]\n\
         [dns]\nnameservers = [\"192.0.2.53\", \"[2001:db8::53]:5353\"]\n",
        Some(DIRECTORY),
    );
    let c = f.load().unwrap();
    assert_eq!(c.inbound.max_message_size, 10 * 1024);
    assert_eq!(c.inbound.command_timeout, Duration::from_secs(45));
    assert_eq!(c.inbound.data_timeout, Duration::from_secs(5400));
    assert_eq!(c.outbound.relay_host.as_deref(), Some("[2001:db8::1]:587"));
    assert_eq!(c.outbound.retry, vec![Duration::from_millis(500)]);
    assert_eq!(c.dns.nameservers[0], "192.0.2.53:53".parse().unwrap());
    assert_eq!(c.dns.nameservers[1].port(), 5353);
}

#[test]
fn is_trusted_handles_ipv4_mapped_ipv6() {
    let c = loaded("trusted_networks = [\"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.7\"]\n");
    assert!(c.is_trusted("10.1.2.3".parse().unwrap()));
    assert!(c.is_trusted("::ffff:10.1.2.3".parse().unwrap()));
    assert!(c.is_trusted(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))));
    assert!(c.is_trusted("192.0.2.7".parse().unwrap()));
    assert!(!c.is_trusted("192.0.2.8".parse().unwrap()));
    assert!(!c.is_trusted("11.0.0.1".parse().unwrap()));
    assert!(!c.is_trusted("::ffff:11.0.0.1".parse().unwrap()));
    assert!(!c.is_trusted("127.0.0.1".parse().unwrap()));
    assert!(c.is_local_domain(&"localhost".parse().unwrap()));
    assert!(!c.is_local_domain(&"example.org".parse().unwrap()));
}

#[test]
fn missing_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = fs::canonicalize(dir.path()).unwrap().join("nope.toml");
    let e = Config::load(&path).unwrap_err();
    assert_eq!(e.file(), path);
    assert_eq!(e.line(), None);
    assert_eq!(
        e.to_string(),
        format!(
            "{}: cannot read: No such file or directory (os error 2)",
            path.display()
        )
    );
}

#[test]
fn missing_directory_file() {
    let f = Fixture::new(
        "hostname = \"mx.example.org\"\ndirectory = \"users.toml\"\n",
        None,
    );
    let e = f.err();
    assert_located(&e, &f.path("smtpmta.toml"), 2, "directory", "cannot read `");
    assert!(
        e.to_string().contains(&format!(
            "{}`: No such file",
            f.path("users.toml").display()
        )),
        "{e}"
    );
    // Default (key absent): still names the key, without a line.
    let f = Fixture::new("", None);
    let e = f.err();
    assert_eq!((e.key(), e.line()), (Some("directory"), None), "{e}");
}

#[test]
fn unknown_key_top_level() {
    config_fails(
        "hostname = \"x\"\n\nhostnme = \"y\"\n",
        3,
        "hostnme",
        "unknown key (expected one of: hostname, data_dir,",
    );
}

#[test]
fn unknown_key_in_section() {
    config_fails(
        "hostname = \"x\"\n[inbound]\nlisten = []\n\n  bogus = 1\n[outbound]\nport = 26\n",
        5,
        "inbound.bogus",
        "unknown key (expected one of: listen, max_handlers,",
    );
    config_fails(
        "[debug]\nSMTPDebug = 1\nsmtpdebug = 1\n",
        3,
        "debug.smtpdebug",
        "expected one of: SMTPDebug, SMTPDebugIO",
    );
}

#[test]
fn wrong_type() {
    config_fails(
        "# comment\n[inbound]\nmax_recipients = 5\n\n\n\nmax_handlers = \"ten\"\n",
        7,
        "inbound.max_handlers",
        "invalid type: string \"ten\", expected an integer",
    );
    config_fails(
        "local_domains = \"localhost\"\n",
        1,
        "local_domains",
        "invalid type: string \"localhost\", expected an array",
    );
    config_fails(
        "hostname = \"x\"\ninbound = 5\n",
        2,
        "inbound",
        "invalid type: integer `5`, expected a table",
    );
}

#[test]
fn out_of_range_values() {
    config_fails(
        "[inbound]\nmax_handlers = 0\n",
        2,
        "inbound.max_handlers",
        "must be at least 1",
    );
    config_fails(
        "[debug]\nLog_MailRouting = 15\n",
        2,
        "debug.Log_MailRouting",
        "`15` is not one of 0, 10, 20, 30, 40",
    );
    config_fails(
        "[debug]\nSMTPDebugIO = 4\n",
        2,
        "debug.SMTPDebugIO",
        "out of range",
    );
    config_fails(
        "[outbound]\nretry = []\n",
        2,
        "outbound.retry",
        "at least one interval",
    );
}

#[test]
fn bare_newline_and_metrics_keys() {
    let c = loaded("[inbound]\nbare_newline = \"reject\"\n[metrics]\nlisten = \"\"\n");
    assert_eq!(c.inbound.bare_newline, mta_types::BareNewline::Reject);
    assert_eq!(c.metrics.listen, None);
    config_fails(
        "hostname = \"x\"\n[inbound]\nbare_newline = \"fix\"\n",
        3,
        "inbound.bare_newline",
        "unknown variant `fix`, expected `normalize` or `reject`",
    );
    config_fails(
        "[metrics]\n\nlisten = \"localhost\"\n",
        3,
        "metrics.listen",
        "`localhost` is not a socket address",
    );
}

#[test]
fn bad_cidr() {
    config_fails(
        "hostname = \"x\"\n\ntrusted_networks = [\"127.0.0.0/8\",\n  \"10.0.0.0/33\"]\n",
        4,
        "trusted_networks",
        "`10.0.0.0/33` is not a CIDR network",
    );
}

#[test]
fn bad_duration_size_socket_relay() {
    config_fails(
        "[outbound]\nretry = [\"1m\", \"5 minutes\"]\n",
        2,
        "outbound.retry",
        "`5 minutes` is not a duration",
    );
    config_fails(
        "[dns]\n\ntimeout = \"5x\"\n",
        3,
        "dns.timeout",
        "`5x` is not a duration",
    );
    config_fails(
        "[inbound]\nmax_message_size = \"25Q\"\n",
        2,
        "inbound.max_message_size",
        "`25Q` is not a size",
    );
    config_fails(
        "[inbound]\nlisten = [\"127.0.0.1\"]\n",
        2,
        "inbound.listen",
        "`127.0.0.1` is not a socket address",
    );
    config_fails(
        "[outbound]\nrelay_host = \"smtp.example.com\"\n",
        2,
        "outbound.relay_host",
        "is not host:port",
    );
    config_fails(
        "hostname = \"not a host\"\n",
        1,
        "hostname",
        "is not a host name",
    );
}

#[test]
fn syntax_error_names_line_and_key() {
    config_fails(
        "[inbound]\nmax_errors = 3\nmax_hops = \"25\n",
        3,
        "inbound.max_hops",
        "",
    );
}

#[test]
fn bad_address_in_directory() {
    directory_fails("[[user]]\nname = \"postmaster\"\naddresses = [\"postmaster@localhost\"]\nmaildir = \"mail/pm\"\n\n\
         [[user]]\nname = \"bob\"\naddresses = [\"bob@localhost\",\n    \"not an address\"]\nmaildir = \"mail/bob\"\n", 9,
        "user[1].addresses",
        "`not an address` is not a mail address: ");
    directory_fails(
        "[aliases]\n\"abuse@localhost\" = [\"x@\"]\n",
        2,
        "aliases.\"abuse@localhost\"",
        "`x@` is not a mail address",
    );
    directory_fails(
        "[aliases]\n\"abuse\" = [\"postmaster@localhost\"]\n",
        2,
        "aliases.abuse",
        "`abuse` is not a mail address",
    );
}

#[test]
fn unknown_key_and_missing_key_in_directory() {
    directory_fails("[[user]]\nname = \"a\"\naddresses = [\"a@localhost\"]\nmaildir = \"m/a\"\nmailbox = \"x\"\n", 5,
        "user[0].mailbox",
        "unknown key (expected one of: name, addresses, maildir, password, lmtp)");
    let (e, _) = directory_err("[[user]]\nname = \"a\"\nmaildir = \"m/a\"\n");
    assert!(e.to_string().contains("missing key `addresses`"), "{e}");
    assert_eq!(e.key(), Some("user[0]"), "{e}");
}

#[test]
fn duplicate_address() {
    directory_fails("[[user]]\nname = \"a\"\naddresses = [\"a@localhost\", \"shared@example.org\"]\nmaildir = \"m/a\"\n\
         [[user]]\nname = \"b\"\naddresses = [\"b@localhost\",\n  \"Shared@Example.org\"]\nmaildir = \"m/b\"\n", 8,
        "user[1].addresses",
        "`Shared@example.org` is already assigned to user `a` (user[0])");
    directory_fails("[[user]]\nname = \"a\"\naddresses = [\"a@localhost\"]\nmaildir = \"m/a\"\n[aliases]\n\"A@localhost\" = [\"x@y.org\"]\n", 6,
        "aliases.\"A@localhost\"",
        "is both an alias and an address of user `a`");
}

#[test]
fn address_not_in_local_domain() {
    directory_fails(
        "[[user]]\nname = \"a\"\naddresses = [\"a@elsewhere.net\"]\nmaildir = \"m/a\"\n",
        3,
        "user[0].addresses",
        "`a@elsewhere.net` is not in a local domain (local_domains: localhost, example.org)",
    );
    directory_fails(
        "[aliases]\n\"x@elsewhere.net\" = [\"a@localhost\"]\n",
        2,
        "aliases.\"x@elsewhere.net\"",
        "is not in a local domain",
    );
}

#[test]
fn maildir_must_stay_inside_data_dir() {
    directory_fails(
        "[[user]]\nname = \"a\"\naddresses = [\"a@localhost\"]\nmaildir = \"mail/../../etc\"\n",
        4,
        "user[0].maildir",
        "must not contain `..`",
    );
    directory_fails(
        "[[user]]\nname = \"a\"\naddresses = [\"a@localhost\"]\nmaildir = \"/etc\"\n",
        4,
        "user[0].maildir",
        "not absolute",
    );
}

#[test]
fn reload_directory_sees_changes_and_errors() {
    let f = Fixture::new("", Some(DIRECTORY));
    let c = f.load().unwrap();
    fs::write(
        f.path("directory.toml"),
        "[aliases]\n\"all@localhost\" = [\"a@localhost\", \"b@x.org\"]\n",
    )
    .unwrap();
    let d = c.reload_directory().unwrap();
    assert!(d.users.is_empty());
    assert_eq!(d.expand(&"ALL@localhost".parse().unwrap()).len(), 2);
    fs::write(f.path("directory.toml"), "[[user]]\nname = 3\n").unwrap();
    let e = c.reload_directory().unwrap_err();
    assert_located(
        &e,
        &f.path("directory.toml"),
        2,
        "user[0].name",
        "invalid type: integer `3`",
    );
    fs::remove_file(f.path("directory.toml")).unwrap();
    let e = c.reload_directory().unwrap_err();
    assert_eq!(
        (e.file(), e.key()),
        (f.path("smtpmta.toml").as_path(), Some("directory")),
        "{e}"
    );
}

#[test]
fn user_and_group_are_resolved_at_load() {
    // `nobody` and `nogroup` exist on every Debian system.
    let c = loaded("hostname = \"mx.example\"\nuser = \"nobody\"\n");
    let run_as = c.run_as.expect("run_as");
    assert_eq!(run_as.user, "nobody");
    assert_eq!(run_as.uid, 65534);
    assert_eq!(run_as.gid, 65534, "the user's primary group by default");
    let c = loaded("user = \"nobody\"\ngroup = \"nogroup\"\n");
    assert_eq!(c.run_as.unwrap().group, "nogroup");
    assert_eq!(loaded("").run_as, None, "no `user`: as today");
}

#[test]
fn unknown_user_or_group_names_file_line_and_key() {
    config_fails(
        "hostname = \"mx.example\"\nuser = \"no-such-mail-user\"\n",
        2,
        "user",
        "no such user `no-such-mail-user`",
    );
    config_fails(
        "user = \"nobody\"\n\ngroup = \"no-such-group\"\n",
        3,
        "group",
        "no such group `no-such-group`",
    );
    config_fails("group = \"nogroup\"\n", 1, "group", "needs `user`");
    config_fails("user = \"root\"\n", 1, "user", "is root");
}

#[test]
fn milters_load_in_order_with_defaults() {
    let f = Fixture::new(
        "[[milter]]\nname = \"rspamd\"\naddress = \"inet:127.0.0.1:11332\"\nlisteners = [\"smtp\"]\n\n[[milter]]\nname = \"clamav\"\naddress = \"unix:run/clamav.sock\"\ndefault_action = \"accept\"\ncontent_timeout = \"5m\"\n",
        Some(DIRECTORY),
    );
    let c = f.load().unwrap();
    assert_eq!(c.milter.len(), 2);
    let r = &c.milter[0];
    assert_eq!(
        r.address,
        MilterAddress::Inet {
            host: "127.0.0.1".into(),
            port: 11332
        }
    );
    assert_eq!(r.default_action, MilterDefault::Tempfail);
    assert_eq!(r.connect_timeout, Duration::from_secs(5));
    assert_eq!(r.command_timeout, Duration::from_secs(30));
    assert_eq!(r.content_timeout, Duration::from_secs(120));
    assert_eq!(r.listeners, vec!["smtp".to_string()]);
    let m = &c.milter[1];
    assert_eq!(m.address, MilterAddress::Unix(f.path("run/clamav.sock")));
    assert_eq!(m.default_action, MilterDefault::Accept);
    assert_eq!(m.content_timeout, Duration::from_secs(300));
    assert_eq!(m.listeners.len(), 3);
    assert!(loaded("").milter.is_empty());
}

#[test]
fn milter_errors_name_file_line_and_key() {
    let head = "hostname = \"x\"\n[[milter]]\nname = \"a\"\n";
    config_fails(
        &format!("{head}address = \"tcp:1.2.3.4:5\"\n"),
        4,
        "milter[0].address",
        "is not a milter address",
    );
    config_fails(
        &format!("{head}address = \"inet:h:1\"\nlisteners = [\"lmtp\"]\n"),
        5,
        "milter[0].listeners",
        "`lmtp` is not a listener",
    );
    config_fails(
        &format!("{head}address = \"inet:h:1\"\ndefault_action = \"bounce\"\n"),
        5,
        "milter[0].default_action",
        "bounce",
    );
    config_fails(
        &format!(
            "{head}address = \"inet:h:1\"\n[[milter]]\nname = \"a\"\naddress = \"inet:h:2\"\n"
        ),
        6,
        "milter[1].name",
        "a second milter called `a`",
    );
    config_fails(
        &format!("{head}address = \"inet:h:1\"\ncommand_timeout = \"0s\"\n"),
        5,
        "milter[0].command_timeout",
        "more than 0",
    );
}

#[test]
fn the_starter_shaping_rules_load() {
    let f = Fixture::new(include_str!("../../../etc/shaping.toml"), Some(DIRECTORY));
    let config = f.load().expect("etc/shaping.toml loads");
    let rules = &config.outbound.shaping;
    assert_eq!(rules.len(), 5);
    assert_eq!(rules[0].label(), "google");
    assert_eq!(rules[0].connection_limit, Some(10));
    assert_eq!(rules[0].max_message_rate.unwrap().to_string(), "300/min");
    assert_eq!(rules[1].on_reply[1].action, ReplyAction::ConnectionLimit(2));
    assert!(rules[4].patterns.is_empty(), "the last rule is the default");
}

#[test]
fn a_bad_shaping_value_names_its_line_and_key() {
    config_fails(
        "[outbound]\n[[outbound.shaping]]\nmatch = [\"a.test\"]\nmax_message_rate = \"300/fortnight\"\n",
        4,
        "outbound.shaping[0].max_message_rate",
        "fortnight",
    );
    let (e, _) = config_err(
        "[[outbound.shaping]]\n[[outbound.shaping.on_reply]]\nmatch = \"(\"\naction = \"suspend\"\nfor = \"1m\"\n",
    );
    assert!(e.to_string().contains("bad regex"), "{e}");
}

#[test]
fn door_keys_load_and_bad_values_are_located() {
    let c = loaded(
        "[inbound]\ndnsbl = [\"zen.example*2\", \"bl.example=127.0.0.[2..11]*1\"]\ndnswl = [\"list.dnswl.example*-5\"]\ndnsbl_threshold = 2\ngreet_pause = \"3s\"\nmax_connection_rate_per_client = \"60/min\"\nmax_message_rate_per_client = \"\"\n",
    );
    assert_eq!(c.inbound.dnsbl.len(), 2);
    assert_eq!(c.inbound.dnsbl[0].weight, 2);
    assert_eq!(c.inbound.dnswl[0].weight, -5);
    assert_eq!(c.inbound.dnsbl_threshold, 2);
    assert_eq!(c.inbound.greet_pause, Duration::from_secs(3));
    assert_eq!(
        c.inbound
            .max_connection_rate_per_client
            .limit
            .unwrap()
            .to_string(),
        "60/min"
    );
    assert_eq!(c.inbound.max_message_rate_per_client.limit, None);
    assert_eq!(c.inbound.max_connections_per_client.limit, 50);
    assert!(!c.inbound.max_connections_per_client.local);
    let c = loaded("[inbound]\nmax_connections_per_client = \"local:7\"\nmax_message_rate_per_client = \"local:60/min\"\n");
    assert_eq!(
        c.inbound.max_connections_per_client,
        Scoped {
            limit: 7,
            local: true
        }
    );
    let rate = c.inbound.max_message_rate_per_client;
    assert!(
        rate.local && rate.limit.unwrap().to_string() == "60/min",
        "{rate:?}"
    );
    assert!(c.inbound.forbid_unauth_pipelining);

    config_fails(
        "[inbound]\ndnsbl = [\n  \"ok.example\",\n  \"bad.example=127.0.0\",\n]\n",
        4,
        "inbound.dnsbl",
        "is not a DNS list site",
    );
    config_fails(
        "[inbound]\n\nmax_recipient_rate_per_client = \"60 a minute\"\n",
        3,
        "inbound.max_recipient_rate_per_client",
        "is not a rate",
    );
}

#[test]
fn cluster_keys_load_and_bad_values_are_located() {
    let c = Fixture::new("", Some(DIRECTORY)).load().unwrap().cluster;
    assert_eq!(c.redis, None);
    assert!(!c.node.is_empty(), "\"\" is the system's host name");
    assert_eq!(c.peer_password, None);
    assert_eq!(c.timeout, Duration::from_millis(250));
    assert_eq!(c.heartbeat_ttl(), Duration::from_secs(15));
    let whole = Fixture::new("[inbound]\nlisten = [\"0.0.0.0:25\"]\n", Some(DIRECTORY))
        .load()
        .unwrap();
    assert_eq!(whole.peer_smtp_address(), format!("{}:25", whole.hostname));

    let f = Fixture::new(
        "[cluster]\nredis = \"redis://:pw@127.0.0.1:6379/0\"\nnode = \"mx1\"\npeer_password_file = \"peer.secret\"\nlease_ttl = \"5s\"\npeer_address = \"mx1.example:2525\"\n",
        Some(DIRECTORY),
    );
    fs::write(f.path("peer.secret"), "s3cret\n").unwrap();
    let c = f.load().unwrap().cluster;
    assert_eq!(c.node, "mx1");
    assert_eq!(c.peer_password_file, Some(f.path("peer.secret")));
    assert_eq!(c.peer_password.as_ref().unwrap().expose(), "s3cret");
    assert_eq!(c.lease_ttl, Duration::from_secs(5));
    assert_eq!(c.peer_address.as_deref(), Some("mx1.example:2525"));
    let redis = c.redis.as_ref().unwrap();
    assert_eq!(redis.to_string(), "redis://:***@127.0.0.1:6379/0");
    assert!(!format!("{c:?}").contains("s3cret") && !format!("{c:?}").contains("pw@"));

    config_fails(
        "[cluster]\nnode = \"a\"\nredis = \"localhost:6379\"\n",
        3,
        "cluster.redis",
        "is not a Redis URL",
    );
    config_fails(
        "[cluster]\nnode = \"two words\"\n",
        2,
        "cluster.node",
        "is not a node name",
    );
    config_fails(
        "[cluster]\n\npeer_password_file = \"missing.secret\"\n",
        3,
        "cluster.peer_password_file",
        "cannot read",
    );
    config_fails(
        "[cluster]\npeer_address = \"mx1.example\"\n",
        2,
        "cluster.peer_address",
        "is not host:port",
    );
    config_fails(
        "[cluster]\nheartbeat = \"0s\"\n",
        2,
        "cluster.heartbeat",
        "more than 0",
    );
    config_fails(
        "[cluster]\nredis_url = \"redis://h:1\"\n",
        2,
        "cluster.redis_url",
        "unknown key",
    );
}

#[test]
fn lmtp_default_and_per_user_choices() {
    let f = Fixture::new(
        "[lmtp]\naddress = \"unix:run/lmtp\"\nmax_connections = 2\n",
        Some("[[user]]\nname = \"a\"\naddresses = [\"a@localhost\"]\n\n[[user]]\nname = \"b\"\naddresses = [\"b@localhost\"]\nlmtp = \"inet:[::1]:24\"\n\n[[user]]\nname = \"c\"\naddresses = [\"c@localhost\"]\nlmtp = \"none\"\n"),
    );
    let c = f.load().unwrap();
    let default = mta_types::Endpoint::Unix(f.path("run/lmtp"));
    assert_eq!(c.lmtp.address.as_ref(), Some(&default));
    assert_eq!(c.lmtp.max_connections, 2);
    assert_eq!(c.lmtp.timeout, Duration::from_secs(60));
    let users = &c.directory.users;
    assert_eq!(
        users[0].maildir,
        c.data_dir.join("mail/a"),
        "maildir defaults"
    );
    assert_eq!(
        users[0].lmtp_server(c.lmtp.address.as_ref()),
        Some(&default)
    );
    assert_eq!(
        users[1].lmtp_server(c.lmtp.address.as_ref()),
        Some(&mta_types::Endpoint::Inet {
            host: "::1".into(),
            port: 24
        })
    );
    assert_eq!(users[2].lmtp_server(c.lmtp.address.as_ref()), None);
    // No [lmtp]: everyone on the Maildir.
    let plain = Fixture::new("", Some(DIRECTORY)).load().unwrap();
    assert_eq!(plain.lmtp.address, None);
}

#[test]
fn lmtp_errors_name_file_line_and_key() {
    config_fails(
        "[lmtp]\naddress = \"/run/dovecot/lmtp\"\n",
        2,
        "lmtp.address",
        "is not an LMTP address",
    );
    config_fails(
        "[lmtp]\ntimeout = \"0s\"\n",
        2,
        "lmtp.timeout",
        "more than 0",
    );
    directory_fails(
        "[[user]]\nname = \"a\"\naddresses = [\"a@localhost\"]\nlmtp = \"dovecot\"\n",
        4,
        "user[0].lmtp",
        "is not an LMTP address",
    );
}

#[test]
fn shaping_limits_may_be_local_to_the_node() {
    let f = Fixture::new(
        "[[outbound.shaping]]\nmatch = [\"a.test\"]\nconnection_limit = \"local:4\"\nmax_message_rate = \"local:300/min\"\nmax_connection_rate = \"10/s\"\n[[outbound.shaping]]\nconnection_limit = 2\n",
        Some(DIRECTORY),
    );
    let rules = f.load().unwrap().outbound.shaping;
    assert_eq!(rules[0].connection_limit, Some(4));
    assert_eq!(rules[0].max_message_rate.unwrap().to_string(), "300/min");
    assert_eq!(
        rules[0].local,
        LocalLimits {
            connection_limit: true,
            max_message_rate: true,
            max_connection_rate: false
        }
    );
    assert_eq!(rules[1].connection_limit, Some(2));
    assert_eq!(rules[1].local, LocalLimits::default());
    config_fails(
        "[[outbound.shaping]]\nconnection_limit = \"lokal:4\"\n",
        2,
        "outbound.shaping[0].connection_limit",
        "is not a count",
    );
    config_fails(
        "[[outbound.shaping]]\nconnection_limit = 0\n",
        2,
        "outbound.shaping[0].connection_limit",
        "at least 1",
    );
}
