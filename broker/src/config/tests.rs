use super::*;

fn file(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

fn parse(file: &tempfile::NamedTempFile, flags: &[&str]) -> anyhow::Result<ServeArgs> {
    let path = file.path().display().to_string();
    let mut argv = vec!["serve", "--config", path.as_str()];
    argv.extend_from_slice(flags);
    parse_serve(argv)
}

#[test]
fn config_file_keys_are_the_flags_and_flags_override_them() {
    let f = file(
        r#"
        id = 3
        listen = "0.0.0.0:7070"
        data_dir = "/var/lib/taskraft"
        peers = ["1=a:7070", "2=b:7070", "3=c:7070"]
        max-payload = 2048
        visibility-timeout = "45s"
        metrics = false
        id-from-hostname = false
        "#,
    );
    let a = parse(&f, &["--max-payload", "4096", "--peers", "1=x:1"]).unwrap();
    assert_eq!(a.id, 3);
    assert_eq!(a.listen.to_string(), "0.0.0.0:7070");
    assert_eq!(a.data_dir, PathBuf::from("/var/lib/taskraft"));
    assert_eq!(a.visibility_timeout, Duration::from_secs(45));
    assert!(!a.metrics);
    assert!(!a.id_from_hostname);
    // The command line wins, for single values and lists alike.
    assert_eq!(a.max_payload, 4096);
    assert_eq!(a.peers, vec!["1=x:1".to_string()]);
    // Defaults stay for what neither sets.
    assert_eq!(a.max_attempts, 3);

    let b = parse(&f, &[]).unwrap();
    assert_eq!(b.peers.len(), 3);
    assert_eq!(b.max_payload, 2048);
    let on = file("id-from-hostname = true\npeers = \"1=a:1,2=b:2\"");
    let c = parse(&on, &[]).unwrap();
    assert!(c.id_from_hostname);
    assert_eq!(c.peers, vec!["1=a:1".to_string(), "2=b:2".to_string()]);
}

#[test]
fn config_file_errors_name_the_key() {
    let err = |text: &str| parse(&file(text), &[]).unwrap_err().to_string();
    let e = err("listen = \"127.0.0.1:1\"\nlisten_adress = \"x\"");
    assert!(e.contains("unknown key \"listen_adress\""), "{e}");
    let e = err("config = \"other.toml\"");
    assert!(e.contains("unknown key \"config\""), "{e}");
    let e = err("server = \"x\"");
    assert!(e.contains("unknown key \"server\""), "{e}");
    let e = err("max-payload = [1, 2]");
    assert!(e.contains("\"max-payload\" takes one value"), "{e}");
    let e = err("id-from-hostname = \"yes\"");
    assert!(
        e.contains("\"id-from-hostname\" takes true or false"),
        "{e}"
    );
    let e = err("[tls]\ncert = \"x\"");
    assert!(e.contains("unknown key \"tls\""), "{e}");
    let e = err("id = ");
    assert!(e.contains("parsing the config file"), "{e}");
    // A value clap refuses is reported by clap, naming the flag.
    let e = err("visibility-timeout = \"soon\"");
    assert!(e.contains("--visibility-timeout"), "{e}");
}

/// The example names its cluster secret file under /etc; the test puts one in its
/// place with the flag (which overrides the file's key) and checks the rest.
#[test]
fn the_example_config_file_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/taskraft.toml");
    let a = parse_serve(["serve", "--config", path]).unwrap();
    assert_eq!(
        a.cluster_secret_file,
        Some(PathBuf::from("/etc/taskraft/cluster-secret"))
    );
    let secret = file("s3cret\n");
    let secret = secret.path().display().to_string();
    let c = parse_serve(["serve", "--config", path, "--cluster-secret-file", &secret])
        .unwrap()
        .into_config()
        .unwrap();
    assert_eq!((c.id, c.peers.len()), (1, 3));
    assert_eq!(c.peers[&2], "broker-2:7070/broker-2:7072");
    assert_eq!(c.peer_listen, "0.0.0.0:7072".parse().unwrap());
    assert_eq!(c.cluster_secret.as_deref(), Some("s3cret"));
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/taskraft"));
}

#[test]
fn node_id_is_the_statefulset_ordinal_plus_one() {
    assert_eq!(id_from_hostname("taskraft-0").unwrap(), 1);
    assert_eq!(id_from_hostname("taskraft-2").unwrap(), 3);
    assert_eq!(
        id_from_hostname("my-broker-10.my-broker.ns.svc").unwrap(),
        11
    );
    for bad in [
        "taskraft",
        "taskraft-",
        "taskraft-x1",
        "-",
        "",
        "t-99999999999999999999",
    ] {
        assert!(id_from_hostname(bad).is_err(), "{bad:?}");
    }
}

mod peer_flags {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn config(args: &[&str]) -> anyhow::Result<Config> {
        let mut all = vec!["taskraft"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all)?.serve.into_config()
    }

    #[test]
    fn peer_service_defaults_to_client_port_plus_two() {
        let c = config(&["--listen", "127.0.0.1:7070"]).unwrap();
        assert_eq!(c.peer_listen, "127.0.0.1:7072".parse().unwrap());
        let c = config(&["--id", "2", "--peers", "1=a:7070,2=b:7080/b:9999"]).unwrap();
        assert_eq!(c.peers[&1], "a:7070/a:7072");
        assert_eq!(c.advertise.as_deref(), Some("b:7080"));
        assert_eq!(c.peer_advertise.as_deref(), Some("b:9999"));
    }

    #[test]
    fn peer_service_is_never_the_client_listener() {
        let e = config(&[
            "--listen",
            "127.0.0.1:7070",
            "--peer-listen",
            "127.0.0.1:7070",
        ]);
        assert!(e.unwrap_err().to_string().contains("--peer-listen"));
    }

    #[test]
    fn an_exposed_peer_port_needs_a_cluster_secret() {
        let e = config(&["--peer-listen", "0.0.0.0:7072"]).unwrap_err();
        assert!(e.to_string().contains("--cluster-secret"), "{e}");
        let c = config(&["--peer-listen", "0.0.0.0:7072", "--cluster-secret", "s"]).unwrap();
        assert_eq!(c.cluster_secret.as_deref(), Some("s"));
    }
}
