//! A big value through the routed handle costs the memory it costs through
//! the generated method: the handle sends a single-key command's packed
//! bytes as redis-rs packed them (no parse and re-pack copies). Each side
//! is measured in a process of its own (the peak resident set, `VmHWM`).

use mredis::MRedis;
use mredis_tests::{servers, urls};

const VALUE: usize = 64 << 20;

fn peak_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Run by `a_big_value_costs_the_same_through_the_handle` in a child
/// process: one SET of a 64 MiB value, by `MREDIS_MEM_MODE`, printing how
/// much the peak grew.
#[test]
fn child_sets_one_big_value() {
    let Ok(mode) = std::env::var("MREDIS_MEM_MODE") else {
        return;
    };
    let s = servers(2);
    let mr = MRedis::new(urls(&s)).unwrap();
    let value = vec![b'v'; VALUE];
    let before = peak_kb();
    if mode == "handle" {
        let mut con = mr.get_connection().unwrap();
        let _: () = redis::cmd("SET").arg("big").arg(&value).query(&mut con).unwrap();
    } else {
        let _: () = mr.set("big", &value).unwrap();
    }
    let stored: usize = mr.strlen("big").unwrap();
    assert_eq!(stored, VALUE);
    println!("grew {} KB", peak_kb() - before);
}

fn growth(mode: &str) -> u64 {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &mredis_tests::test_name(module_path!(), "child_sets_one_big_value"),
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("MREDIS_MEM_MODE", mode)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{mode}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find_map(|l| l.split_once("grew ").map(|(_, rest)| rest))
        .and_then(|l| l.strip_suffix(" KB"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{mode}: no figure in {text}"))
}

#[test]
fn a_big_value_costs_the_same_through_the_handle() {
    if !cfg!(target_os = "linux") {
        return;
    }
    let method = growth("method");
    let handle = growth("handle");
    println!("64 MiB SET: peak grew {method} KB through the method, {handle} KB through the handle");
    // The handle used to copy the value twice more (parse, then re-pack).
    assert!(
        handle <= method + method / 10 + 8 * 1024,
        "through the handle the peak grew {handle} KB, through the method {method} KB"
    );
}
