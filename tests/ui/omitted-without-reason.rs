// A malformed command table is a compile error naming commands.toml:LINE and the command.
mredis_macros::check_table!(r#"
[[command]]
name = "SELECT"
group = "connection"
class = "omitted"
summary = "Select a database."
"#);

fn main() {}
