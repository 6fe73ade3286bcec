//! Small usability gaps: `PerServer` as one total or one list, and a
//! misspelt field of a fleet file named (never a value, nor a key that is
//! not a misspelling).

use mredis::{MRedis, PerServer, error_text};
use mredis_tests::servers;

#[test]
fn per_server_results_sum_and_flatten() {
    let s = servers(2);
    let mr = MRedis::new([s[0].url(), s[1].url()]).unwrap();
    for i in 0..10 {
        mr.set::<_, _, ()>(format!("k{i}"), i).unwrap();
    }
    let sizes: PerServer<usize> = mr.dbsize().unwrap();
    assert_eq!(sizes.sum::<usize>(), 10);
    assert_eq!(sizes.values().sum::<usize>(), 10);
    assert_eq!(sizes.clone().into_values().len(), 2);
    // The one-call form a redis-rs user reaches for.
    let total: usize = mr.dbsize::<usize>().unwrap().sum();
    assert_eq!(total, 10);
    let total: i64 = mr.dbsize::<i64>().unwrap().sum();
    assert_eq!(total, 10);

    let mut keys: Vec<String> = mr.keys::<_, Vec<String>>("k*").unwrap().flatten();
    keys.sort();
    let mut want: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    want.sort();
    assert_eq!(keys, want);
    // In configuration order: the first server's keys first.
    let per: PerServer<Vec<String>> = mr.keys("k*").unwrap();
    let first = per[&s[0].name()].len();
    let flat = per.clone().flatten();
    assert_eq!(&flat[..first], &per[&s[0].name()][..]);
}

#[test]
fn a_misspelt_fleet_field_is_named() {
    let e = mredis::builder_from_toml("server = [\"redis://u:Secret-pw@127.0.0.1:6379/0\"]\n").unwrap_err();
    assert_eq!(
        error_text(&e),
        "mredis: invalid configuration: fleet configuration, line 1: unknown field `server`, did you mean \
         `servers`? (the fields are mode, hash, hash_tag, hash_tags, read_from, servers and [migrating_from])"
    );
    let e =
        mredis::builder_from_toml("servers = [\"redis://a:1/0\"]\nhash_tag = \"{}\"\nmdoe = \"ketama\"\n").unwrap_err();
    assert_eq!(
        error_text(&e),
        "mredis: invalid configuration: fleet configuration, line 3: unknown field `mdoe`, did you mean \
         `mode`? (the fields are mode, hash, hash_tag, hash_tags, read_from, servers and [migrating_from])"
    );
    // A key that is no field's misspelling may be a pasted secret: not shown.
    let e = mredis::builder_from_toml("servers = [\"redis://a:1/0\"]\nSecret-pw = 1\n").unwrap_err();
    assert_eq!(
        error_text(&e),
        "mredis: invalid configuration: fleet configuration, line 2: unknown field, not shown as it is not \
         near any field's name (the fields are mode, hash, hash_tag, hash_tags, read_from, servers and [migrating_from])"
    );
    assert!(!format!("{e:?}").contains("Secret-pw"));
}
