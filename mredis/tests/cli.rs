//! The `mredis` command-line tool against real servers: locate, stats and
//! rebalance with TOML configurations.

use std::process::Command;

use mredis_tests::servers;

fn mredis(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mredis"))
        .args(args)
        .output()
        .expect("run mredis");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn locate_stats_and_rebalance() {
    let s = servers(3);
    let dir = std::env::temp_dir().join(format!("mredis-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = |ports: &[u16]| {
        let list: Vec<String> = ports.iter().map(|p| format!("\"redis://127.0.0.1:{p}/0\"")).collect();
        format!(
            "mode = \"ketama\"\nhash = \"fnv1a_64\"\nservers = [{}]\n",
            list.join(", ")
        )
    };
    let old = dir.join("old.toml");
    let new = dir.join("new.toml");
    std::fs::write(&old, conf(&[s[0].port(), s[1].port()])).unwrap();
    std::fs::write(&new, conf(&[s[0].port(), s[1].port(), s[2].port()])).unwrap();
    let (old, new) = (old.to_str().unwrap(), new.to_str().unwrap());

    let text = std::fs::read_to_string(old).unwrap();
    let mr = mredis::builder_from_toml(&text).unwrap().build().unwrap();
    for i in 0..2000 {
        mr.set::<_, _, ()>(format!("key:{i}"), i).unwrap();
    }

    let (ok, out) = mredis(&["locate", "--config", old, "key:1", "key:2"]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("key:1\t{}", mr.server_for("key:1").unwrap())),
        "{out}"
    );

    let (ok, out) = mredis(&["stats", "--config", old]);
    assert!(ok, "{out}");
    assert!(
        out.contains("total") && out.contains("2000") && out.contains("imbalance"),
        "{out}"
    );

    let (ok, out) = mredis(&["rebalance", "--from", old, "--to", new, "--dry-run", "--quiet"]);
    assert!(ok, "{out}");
    assert!(out.contains("would move"), "{out}");
    assert_eq!(s[2].dbsize(), 0);

    let (ok, out) = mredis(&["rebalance", "--from", old, "--to", new, "--quiet"]);
    assert!(ok, "{out}");
    assert!(out.contains("verification: 0 keys away"), "{out}");
    assert!(s[2].dbsize() > 300, "about a third moved to the new server");
    let text = std::fs::read_to_string(new).unwrap();
    let moved = mredis::builder_from_toml(&text).unwrap().build().unwrap();
    for i in 0..2000 {
        assert_eq!(moved.get::<_, i64>(format!("key:{i}")).unwrap(), i);
    }

    let (ok, out) = mredis(&["stats", "--config", "/nonexistent.toml"]);
    assert!(!ok && out.contains("cannot read"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
