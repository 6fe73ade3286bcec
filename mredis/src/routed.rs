//! A routed command as a machine: on the server that owns its key, split
//! over the servers of its keys, or sent to every server and merged; keys
//! a migration is moving go through the migration machines.

use redis::{Cmd, RedisResult, Value};

use crate::exec::{Cmds, Machine, Request, Step, block_of, every_server, one};
use crate::merge::{Response, merge_all};
use crate::migration::{One, Split};
use crate::routing::{Plan, Route, Topology, command_name};

/// A routed command: on the server that owns its key (or co-located keys),
/// or split over the servers that own its keys, with keys a migration is
/// moving served through the migration machines. Its output is the reply
/// one server would have given, errors extracted.
pub(crate) struct Routed<'a> {
    core: &'a Topology,
    cmd: &'a Cmd,
    state: RoutedState<'a>,
}

enum RoutedState<'a> {
    /// One server, nothing moving.
    Direct(usize),
    /// Split by server, nothing moving.
    Split(&'a Plan),
    /// Keys moving: the migration machines decide.
    Moving(One<'a>),
    MovingSplit(Split<'a>),
    /// Every server, the replies merged by the policy.
    All(Response),
}

impl<'a> Routed<'a> {
    pub(crate) fn new(core: &'a Topology, route: &'a Route, cmd: &'a Cmd) -> Self {
        let state = match route {
            Route::One { server, moves } if moves.is_empty() => RoutedState::Direct(*server),
            Route::One { server, moves } => {
                RoutedState::Moving(One::new(core, std::slice::from_ref(cmd), false, *server, moves))
            }
            Route::Split(plan) if plan.moves.is_empty() => RoutedState::Split(plan),
            Route::Split(plan) => RoutedState::MovingSplit(Split::new(core, cmd, plan.stride(), plan.merge_policy())),
            Route::All(response) => RoutedState::All(*response),
        };
        Routed { core, cmd, state }
    }

    /// The class of the route, for the command's span.
    pub(crate) fn class(route: &Route) -> &'static str {
        match route {
            Route::One { .. } => "key",
            Route::Split(_) => "split",
            Route::All(_) => "all",
        }
    }
}

fn done_value(step: Step<'_, Value>) -> Step<'_, Value> {
    match step {
        Step::Done(v) => Step::Done(v.and_then(crate::merge::extract_errors)),
        send => send,
    }
}

impl Machine for Routed<'_> {
    type Output = Value;

    fn start(&mut self) -> Step<'_, Value> {
        if let Err(e) = self.core.check_size(self.cmd) {
            return Step::Done(Err(e));
        }
        match &mut self.state {
            RoutedState::Direct(server) => Step::Send(vec![Request {
                server: *server,
                cmds: Cmds::one(self.cmd),
                block: block_of(self.cmd),
            }]),
            RoutedState::Split(plan) => Step::Send(
                plan.commands(self.cmd)
                    .into_iter()
                    .map(|(server, c)| Request {
                        server,
                        cmds: vec![c].into(),
                        block: None,
                    })
                    .collect(),
            ),
            RoutedState::Moving(m) => done_value(m.start()),
            RoutedState::MovingSplit(m) => m.start(),
            RoutedState::All(_) => Step::Send(every_server(self.core, self.cmd)),
        }
    }

    fn next(&mut self, replies: Vec<RedisResult<Vec<Value>>>) -> Step<'_, Value> {
        match &mut self.state {
            RoutedState::Direct(_) => {
                Step::Done(one(replies.into_iter().next()).and_then(crate::merge::extract_errors))
            }
            RoutedState::Split(plan) => {
                let replies = replies
                    .into_iter()
                    .map(|r| one(Some(r)).and_then(crate::merge::extract_errors))
                    .collect();
                Step::Done(plan.merge(self.core, &command_name(self.cmd), replies))
            }
            RoutedState::Moving(m) => done_value(m.next(replies)),
            RoutedState::MovingSplit(m) => m.next(replies),
            RoutedState::All(response) => {
                let names: Vec<&str> = (0..self.core.all()).map(|i| self.core.name(i)).collect();
                let replies = replies.into_iter().map(|r| one(Some(r))).collect();
                Step::Done(merge_all(&command_name(self.cmd), *response, &names, replies))
            }
        }
    }
}
