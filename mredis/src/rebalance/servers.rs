//! Connections to the servers of both configurations: identifying each
//! distinct server, error texts, small queries.

use std::time::Duration;

use redis::{Connection, RedisResult};

use super::*;

pub(super) fn run_id(con: &mut Connection, server: &str, io_timeout: Duration) -> RedisResult<Option<String>> {
    let info: RedisResult<String> = redis::cmd("INFO").arg("server").query(con);
    match info {
        Ok(text) => Ok(text
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|s| s.trim().to_string())),
        Err(e) if e.code().is_some() => Ok(None),
        Err(e) => Err(error(format!("{}; {RERUN}", describe(server, &e, io_timeout)))),
    }
}

/// Connects to every server of both configurations and groups names that
/// are one server. Returns the nodes (with one connection each) and the
/// node of every server of `to`.
pub(super) fn identify(
    from: &MRedis,
    to: &MRedis,
    io_timeout: Duration,
) -> RedisResult<(Vec<Node>, Vec<Connection>, Vec<usize>)> {
    let mut nodes: Vec<Node> = Vec::new();
    let mut cons = Vec::new();
    let mut to_node = Vec::new();
    let (from_servers, to_servers) = (from.servers(), to.servers());
    let all = from_servers
        .iter()
        .map(|s| (false, s))
        .chain(to_servers.iter().map(|s| (true, s)));
    for (is_to, server) in all {
        let existing = nodes.iter().position(|n| n.names.iter().any(|x| x == server.name()));
        let index = match existing {
            Some(i) => i,
            None => {
                let mut con = connect(server, io_timeout)?;
                let id = run_id(&mut con, server.name(), io_timeout)?;
                let same = nodes
                    .iter()
                    .position(|n| n.server.db() == server.db() && id.is_some() && n.run_id.as_deref() == id.as_deref());
                match same {
                    Some(i) => {
                        nodes[i].names.push(server.name().to_string());
                        i
                    }
                    None => {
                        let keys = query(&redis::cmd("DBSIZE"), &mut con, server.name(), io_timeout)?;
                        nodes.push(Node {
                            names: vec![server.name().to_string()],
                            server: server.clone(),
                            run_id: id,
                            keys,
                            in_from: false,
                        });
                        cons.push(con);
                        nodes.len() - 1
                    }
                }
            }
        };
        if is_to {
            to_node.push(index);
        } else {
            nodes[index].in_from = true;
        }
    }
    Ok((nodes, cons, to_node))
}

/// `None` when the server persists writes; otherwise why not. A server
/// that does not answer is an error, not a reason.
pub(super) fn volatility(con: &mut Connection, server: &str, io_timeout: Duration) -> RedisResult<Option<String>> {
    let mut get = |name: &str| -> RedisResult<Result<String, String>> {
        match redis::cmd("CONFIG").arg("GET").arg(name).query::<Vec<String>>(con) {
            Ok(pair) => Ok(pair
                .get(1)
                .cloned()
                .ok_or_else(|| format!("CONFIG GET {name} returned nothing"))),
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                Err(error(format!("{}; {RERUN}", describe(server, &e, io_timeout))))
            }
            Err(e) => Ok(Err(e.detail().map(str::to_string).unwrap_or_else(|| e.to_string()))),
        }
    };
    let save = get("save")?;
    let aof = get("appendonly")?;
    Ok(match (save, aof) {
        (Ok(save), Ok(aof)) => {
            if save.trim().is_empty() && aof != "yes" {
                Some("it has no persistence (save \"\" and appendonly no)".to_string())
            } else {
                None
            }
        }
        (Err(e), _) | (_, Err(e)) => Some(format!("its persistence cannot be read (CONFIG GET failed: {e})")),
    })
}
