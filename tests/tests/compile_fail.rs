//! Compile-fail tests: omitted commands have no method, and a malformed
//! command table is a compile error naming `commands.toml:LINE`.

#[test]
fn ui() {
    // A build that takes both cores: never beside a quiet test.
    let _busy = mredis_tests::busy();
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/*.rs");
}
