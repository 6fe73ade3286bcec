//! The feature-gated command families (`bloom`, `vector-sets`): what they
//! send and where. No Redis 7.0 server runs them (Bloom filters need the
//! RedisBloom module, vector sets Redis 8.0), so two fake servers record the
//! commands they receive and answer `+OK`; every method's command must be
//! byte for byte redis-rs's own (`redis::Cmd::bf_add(...)`) and land on the
//! server that owns its key, from the sync and async clients and both
//! pipelines.
//!
//! Runs in `cargo test --workspace` (the test crate turns both features on);
//! alone: `cargo test -p mredis --features bloom,vector-sets,table-examples --test feature_commands`.
#![cfg(all(feature = "bloom", feature = "vector-sets"))]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use mredis::MRedis;
use redis::bloom::{BloomFilterDumpChunk, BloomFilterInfoType, BloomFilterInsertOptions, BloomFilterScalingOptions};
use redis::vector_sets::{
    EmbeddingInput, VAddOptions, VEmbOptions, VSimOptions, VectorAddInput, VectorSimilaritySearchInput,
};
use redis::{Cmd, Value};

type Seen = Arc<Mutex<Vec<Vec<Vec<u8>>>>>;

/// A server that records every command and answers `+OK` (`+PONG` to PING).
struct Fake {
    url: String,
    seen: Seen,
}

impl Fake {
    fn start() -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("redis://{}/0", listener.local_addr().unwrap());
        let seen = Seen::default();
        let record = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let record = record.clone();
                std::thread::spawn(move || serve(stream, record));
            }
        });
        Fake { url, seen }
    }

    /// The commands received so far, without the connection setup.
    fn commands(&self) -> Vec<Vec<Vec<u8>>> {
        let setup = |c: &Vec<Vec<u8>>| {
            let name = c[0].to_ascii_uppercase();
            name == b"CLIENT" || name == b"PING" || name == b"HELLO" || name == b"SELECT" || name == b"FCALL_RO"
        };
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|c| !setup(c))
            .cloned()
            .collect()
    }
}

fn serve(stream: TcpStream, seen: Seen) {
    let mut out = stream.try_clone().unwrap();
    let mut input = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let n: usize = line.trim_end().strip_prefix('*').unwrap().parse().unwrap();
        let mut args = Vec::with_capacity(n);
        for _ in 0..n {
            line.clear();
            input.read_line(&mut line).unwrap();
            let len: usize = line.trim_end().strip_prefix('$').unwrap().parse().unwrap();
            let mut arg = vec![0; len + 2];
            input.read_exact(&mut arg).unwrap();
            arg.truncate(len);
            args.push(arg);
        }
        let reply: &[u8] = if args[0].eq_ignore_ascii_case(b"PING") {
            b"+PONG\r\n"
        } else if args[0].eq_ignore_ascii_case(b"FCALL_RO") {
            // The fence check at connect: no fence here.
            b"-ERR Function not found\r\n"
        } else {
            b"+OK\r\n"
        };
        seen.lock().unwrap().push(args);
        out.write_all(reply).unwrap();
    }
}

/// The arguments redis-rs would send for `cmd`.
fn args_of(cmd: &Cmd) -> Vec<Vec<u8>> {
    cmd.args_iter()
        .map(|a| match a {
            redis::Arg::Simple(b) => b.to_vec(),
            _ => panic!("no cursor in these commands"),
        })
        .collect()
}

struct Fleet {
    fakes: Vec<Fake>,
    mr: MRedis,
}

impl Fleet {
    fn new() -> Fleet {
        let fakes = vec![Fake::start(), Fake::start()];
        let mr = MRedis::new(fakes.iter().map(|f| f.url.clone())).unwrap();
        Fleet { fakes, mr }
    }

    fn owner(&self, key: &str) -> usize {
        let name = self.mr.server_for(key).unwrap();
        let port = name.split(':').nth(1).unwrap();
        self.fakes
            .iter()
            .position(|f| f.url.contains(&format!(":{port}/")))
            .unwrap()
    }

    fn counts(&self) -> Vec<usize> {
        self.fakes.iter().map(|f| f.commands().len()).collect()
    }

    /// The one command sent since `before`, and the server it went to.
    fn sent_since(&self, before: &[usize]) -> (usize, Vec<Vec<u8>>) {
        let now = self.counts();
        let changed: Vec<usize> = (0..now.len()).filter(|&i| now[i] != before[i]).collect();
        assert_eq!(changed.len(), 1, "{before:?} -> {now:?}");
        let at = changed[0];
        assert_eq!(now[at], before[at] + 1);
        (at, self.fakes[at].commands().pop().unwrap())
    }
}

/// Calls `mr.$method(args)` and checks it sent exactly
/// `redis::Cmd::$method(args)` (or, for a method redis-rs does not have, the
/// words after `sends`) to the owner of the key.
macro_rules! check {
    // The call, then what it must have sent, and to the key's owner.
    (@sends $fleet:expr, $method:ident($key:expr $(, $arg:expr)*), $expected:expr) => {{
        let fleet = &$fleet;
        let before = fleet.counts();
        let reply: Value = fleet.mr.$method($key $(, $arg)*).unwrap();
        assert_eq!(reply, Value::Okay);
        let (at, sent) = fleet.sent_since(&before);
        assert_eq!(sent, $expected, stringify!($method));
        assert_eq!(at, fleet.owner($key), stringify!($method));
        stringify!($method)
    }};
    // A method redis-rs does not have (the table's `cmd` template): the
    // words it must send.
    ($fleet:expr, $method:ident($key:expr $(, $arg:expr)*) sends [$($word:expr),+]) => {
        check!(@sends $fleet, $method($key $(, $arg)*), vec![$(AsRef::<[u8]>::as_ref($word).to_vec()),+])
    };
    ($fleet:expr, $method:ident($key:expr $(, $arg:expr)*)) => {
        check!(@sends $fleet, $method($key $(, $arg)*), args_of(&Cmd::$method($key $(, $arg)*)))
    };
}

fn floats() -> VectorAddInput<'static> {
    VectorAddInput::Values(EmbeddingInput::Float32(&[0.5, 1.5, -2.0]))
}

fn query() -> VectorSimilaritySearchInput<'static> {
    VectorSimilaritySearchInput::Values(EmbeddingInput::Float64(&[0.5, 1.5, -2.0]))
}

#[test]
fn bloom_methods_send_redis_rs_commands_to_the_keys_server() {
    let f = Fleet::new();
    let mut checked = vec![
        check!(f, bf_add("bf:a", "item")),
        check!(f, bf_card("bf:b")),
        check!(f, bf_exists("bf:c", "item")),
        check!(f, bf_info("bf:d")),
        check!(f, bf_info_type("bf:e", BloomFilterInfoType::Capacity)),
        check!(f, bf_insert("bf:f", &["x", "y"])),
        check!(
            f,
            bf_insert_options(
                "bf:g",
                &["x", "y"],
                BloomFilterInsertOptions::default().capacity(10).nocreate()
            )
        ),
        check!(
            f,
            bf_loadchunk(
                "bf:h",
                BloomFilterDumpChunk {
                    iterator: 7,
                    data: b"\x00\x01chunk".to_vec()
                }
            )
        ),
        check!(f, bf_madd("bf:i", &["x", "y", "z"])),
        check!(f, bf_mexists("bf:j", &["x", "y"])),
        check!(f, bf_reserve("bf:k", 0.001, 1000)),
        check!(
            f,
            bf_reserve_options("bf:l", 0.01, 100, BloomFilterScalingOptions::ExpansionRate(4))
        ),
        check!(f, bf_scandump("bf:m", 0)),
    ];
    // The keys above are spread over both servers.
    let owners: Vec<usize> = (b'a'..=b'm').map(|c| f.owner(&format!("bf:{}", c as char))).collect();
    assert!(owners.contains(&0) && owners.contains(&1), "{owners:?}");
    checked.sort();
    assert_eq!(checked, table_methods("bloom"));
}

#[test]
fn vector_set_methods_send_redis_rs_commands_to_the_keys_server() {
    let f = Fleet::new();
    let attrs = BTreeMap::from([("color", "red")]);
    let mut checked = vec![
        check!(f, vadd("v:a", floats(), "e1")),
        check!(
            f,
            vadd_options(
                "v:b",
                VectorAddInput::Fp32(&[1.0, 2.0]),
                "e1",
                &VAddOptions::default()
                    .set_check_and_set_style(true)
                    .set_reduction_dimension(2)
            )
        ),
        check!(f, vcard("v:c")),
        check!(f, vdim("v:d")),
        check!(f, vemb("v:e", "e1")),
        check!(
            f,
            vemb_options("v:f", "e1", &VEmbOptions::default().set_raw_representation(true))
        ),
        check!(f, vrem("v:g", "e1")),
        check!(f, vsetattr("v:h", "e1", &attrs)),
        check!(f, vdelattr("v:i", "e1")),
        check!(f, vgetattr("v:j", "e1")),
        check!(f, vinfo("v:k")),
        check!(f, vismember("v:r", "e1") sends ["VISMEMBER", "v:r", "e1"]),
        check!(f, vlinks("v:l", "e1")),
        check!(f, vlinks_with_scores("v:m", "e1")),
        check!(f, vrandmember("v:n")),
        check!(f, vrandmember_multiple("v:o", 3)),
        check!(f, vsim("v:p", query())),
        check!(
            f,
            vsim_options(
                "v:q",
                VectorSimilaritySearchInput::Element("e1"),
                &VSimOptions::default().set_count(5)
            )
        ),
    ];
    checked.sort();
    assert_eq!(checked, table_methods("vector-sets"));
}

/// The methods of the table's rows of `feature`, sorted.
fn table_methods(feature: &str) -> Vec<&'static str> {
    let mut names: Vec<&str> = mredis::COMMANDS
        .iter()
        .filter(|c| c.feature == Some(feature))
        .flat_map(|c| c.methods.iter().map(|m| m.name))
        .collect();
    names.sort();
    names
}

#[test]
fn pipelines_send_the_same_commands() {
    let f = Fleet::new();
    let key = "bf:pipe";
    let at = f.owner(key);
    let before = f.fakes[at].commands().len();
    let replies: Vec<Value> =
        f.mr.pipeline(key)
            .unwrap()
            .bf_reserve(key, 0.01, 100)
            .bf_madd(key, &["a", "b"])
            .vadd(key, floats(), "e")
            .vsim(key, query())
            .query(&f.mr)
            .unwrap();
    assert_eq!(replies.len(), 4);
    let expected: Vec<Vec<Vec<u8>>> = [
        Cmd::bf_reserve(key, 0.01, 100),
        Cmd::bf_madd(key, &["a", "b"]),
        Cmd::vadd(key, floats(), "e"),
        Cmd::vsim(key, query()),
    ]
    .iter()
    .map(args_of)
    .collect();
    assert_eq!(f.fakes[at].commands()[before..], expected[..]);

    // The fleet pipeline routes each command on its own.
    let keys: Vec<String> = (0..8).map(|i| format!("bf:fleet:{i}")).collect();
    let before = f.counts();
    let mut pipe = f.mr.pipeline_all();
    for k in &keys {
        pipe.bf_add(k, "x");
    }
    let replies: Vec<Value> = pipe.query(&f.mr).unwrap();
    assert_eq!(replies.len(), keys.len());
    for (i, fake) in f.fakes.iter().enumerate() {
        let got = fake.commands()[before[i]..].to_vec();
        let want: Vec<Vec<Vec<u8>>> = keys
            .iter()
            .filter(|k| f.owner(k) == i)
            .map(|k| args_of(&Cmd::bf_add(k, "x")))
            .collect();
        assert_eq!(got, want, "server {i}");
    }
}

#[tokio::test]
async fn async_client_sends_the_same_commands() {
    let f = Fleet::new();
    let mr = mredis::aio::MRedis::connect(f.fakes.iter().map(|fk| fk.url.clone()))
        .await
        .unwrap();
    for (key, expected) in [
        ("bf:async", Cmd::bf_add("bf:async", "x")),
        ("v:async", Cmd::vadd("v:async", floats(), "e")),
    ] {
        let before = f.counts();
        let reply: Value = if key.starts_with("bf:") {
            mr.bf_add(key, "x").await.unwrap()
        } else {
            mr.vadd(key, floats(), "e").await.unwrap()
        };
        assert_eq!(reply, Value::Okay);
        let (at, sent) = f.sent_since(&before);
        assert_eq!(at, f.owner(key));
        assert_eq!(sent, args_of(&expected));
    }
}

/// Every method of the feature rows has an example for the table's routing
/// machinery, routed on its first argument, the key, as the modules read it.
#[cfg(feature = "table-examples")]
#[test]
fn every_feature_method_has_an_example_routed_on_its_first_argument() {
    let examples = mredis::examples::examples();
    for feature in ["bloom", "vector-sets"] {
        for name in table_methods(feature) {
            let ex = examples
                .iter()
                .find(|e| e.method == name)
                .unwrap_or_else(|| panic!("{name}: no example"));
            let (keys, cmd) = (ex.build)();
            let args = args_of(&cmd);
            assert_eq!(args[0], ex.command.as_bytes(), "{name}");
            assert_eq!(keys, vec![args[1].clone()], "{name}");
        }
    }
}
