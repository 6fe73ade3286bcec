//! A handle's commands and pipelines as sans-I/O machines, driven by the
//! sync and async clients' drivers alike.

use redis::{Cmd, RedisResult, Value};

use super::*;

/// One planned command of a handle as a machine (WATCH and UNWATCH, which
/// need a connection the handle keeps, are the handles' own).
pub(crate) enum Planned<'a> {
    /// Routed like the generated method (every server, the replies merged,
    /// for a `class = "all"` row).
    Routed(Routed<'a>),
    /// One page of the fleet-wide SCAN.
    Scan {
        core: &'a Topology,
        step: usize,
        steps: usize,
        server: usize,
        phase: crate::scan::Phase,
        scan: Option<Cmd>,
    },
    /// Decided without asking a server.
    Now(Option<RedisResult<Value>>),
}

impl<'a> Planned<'a> {
    pub(crate) fn new(core: &'a Topology, plan: &'a Dispatch, cmd: &'a Cmd) -> Self {
        match plan {
            Dispatch::Run(route) => Planned::Routed(Routed::new(core, route, cmd)),
            Dispatch::Scan(step, cursor) => {
                let walk = crate::scan::fleet_walk(core);
                match walk.get(*step) {
                    Some(&(server, phase)) => Planned::Scan {
                        core,
                        step: *step,
                        steps: walk.len(),
                        server,
                        phase,
                        scan: Some(scan_cmd(cmd, *cursor)),
                    },
                    None => Planned::Now(Some(Err(cannot("SCAN", "this cursor was not made by this fleet")))),
                }
            }
            Dispatch::Watch(_) => Planned::Now(Some(Err(cannot(
                "WATCH",
                "inside an async pipeline; send WATCH as a command of its own (the handle keeps its connection until EXEC)",
            )))),
            // Nothing watched on this handle (the sync handle runs its own).
            Dispatch::Unwatch => Planned::Now(Some(Ok(Value::Okay))),
            Dispatch::GetKeys | Dispatch::Describe => Planned::Now(Some(Err(cannot(
                &crate::routing::command_name(cmd),
                "its keys could not be found",
            )))),
        }
    }
}

impl Machine for Planned<'_> {
    type Output = Value;

    fn start(&mut self) -> Step<'_, Value> {
        match self {
            Planned::Routed(m) => m.start(),
            Planned::Scan { server, scan, .. } => Step::Send(vec![Request {
                server: *server,
                block: None,
                cmds: scan.take().into_iter().collect::<Vec<_>>().into(),
            }]),
            Planned::Now(result) => Step::Done(
                result
                    .take()
                    .unwrap_or_else(|| Err(client_error("no reply".to_string()))),
            ),
        }
    }

    fn next(&mut self, replies: Vec<RedisResult<Vec<Value>>>) -> Step<'_, Value> {
        match self {
            Planned::Routed(m) => m.next(replies),
            Planned::Scan {
                core,
                step,
                steps,
                server,
                phase,
                ..
            } => {
                let (core, server, phase) = (*core, *server, *phase);
                Step::Done(crate::exec::one(replies.into_iter().next()).and_then(|reply| {
                    scan_page(*step, *steps, reply, |key| {
                        crate::scan::on_walk(core, server, phase, key, None)
                    })
                }))
            }
            Planned::Now(result) => Step::Done(
                result
                    .take()
                    .unwrap_or_else(|| Err(client_error("no reply".to_string()))),
            ),
        }
    }
}

/// A handle's pipeline (not a transaction), every command planned: in call
/// order, runs of commands that each go to one server (nothing moving) are
/// sent together, one pipeline per server, all servers at once; any other
/// command runs on its own between them, its server error reply in its
/// place. A server that fails a batch fails the pipeline, naming it.
pub(crate) struct Batch<'a> {
    pub(super) core: &'a Topology,
    pub(super) cmds: &'a [Cmd],
    pub(super) plans: &'a [Dispatch],
    pub(super) values: Vec<Value>,
    pub(super) next: usize,
    pub(super) state: BatchState<'a>,
}

pub(super) enum BatchState<'a> {
    Idle,
    /// A batch is out: each server's places in the pipeline.
    Sent(Vec<(usize, (), Vec<usize>)>),
    /// A command of its own is out.
    One(Box<Planned<'a>>),
}

impl<'a> Batch<'a> {
    pub(crate) fn new(core: &'a Topology, cmds: &'a [Cmd], plans: &'a [Dispatch]) -> Self {
        Batch {
            core,
            cmds,
            plans,
            values: Vec::with_capacity(cmds.len()),
            next: 0,
            state: BatchState::Idle,
        }
    }

    fn advance(&mut self) -> Step<'static, Vec<Value>> {
        loop {
            if self.next >= self.cmds.len() {
                self.state = BatchState::Idle;
                return Step::Done(Ok(std::mem::take(&mut self.values)));
            }
            let mut per: Vec<(usize, (), Vec<usize>)> = Vec::new();
            let mut j = self.next;
            while let Some(Dispatch::Run(Route::One { server, moves })) = self.plans.get(j)
                && moves.is_empty()
            {
                match per.iter_mut().find(|p| p.0 == *server) {
                    Some(p) => p.2.push(j),
                    None => per.push((*server, (), vec![j])),
                }
                j += 1;
            }
            if !per.is_empty() {
                let requests = per
                    .iter()
                    .map(|(server, _, ats)| Request {
                        server: *server,
                        block: None,
                        cmds: ats.iter().map(|&at| self.cmds[at].clone()).collect::<Vec<_>>().into(),
                    })
                    .collect();
                self.next = j;
                self.state = BatchState::Sent(per);
                return Step::Send(requests);
            }
            let at = self.next;
            let mut one = Box::new(Planned::new(self.core, &self.plans[at], &self.cmds[at]));
            match one.start().into_owned() {
                Step::Send(requests) => {
                    self.state = BatchState::One(one);
                    return Step::Send(requests);
                }
                Step::Wait(d) => {
                    self.state = BatchState::One(one);
                    return Step::Wait(d);
                }
                Step::Done(result) => {
                    if let Err(e) = self.place_one(result) {
                        return Step::Done(Err(e));
                    }
                }
            }
        }
    }

    /// The reply of a command run on its own; a server's error reply is
    /// kept in its place, any other failure ends the pipeline.
    fn place_one(&mut self, result: RedisResult<Value>) -> RedisResult<()> {
        let v = match result {
            Ok(v) => v,
            Err(e) => error_value(&e).ok_or(e)?,
        };
        self.values.push(v);
        self.next += 1;
        Ok(())
    }
}

impl Machine for Batch<'_> {
    type Output = Vec<Value>;

    fn start(&mut self) -> Step<'_, Vec<Value>> {
        self.advance()
    }

    fn next(&mut self, replies: Vec<RedisResult<Vec<Value>>>) -> Step<'_, Vec<Value>> {
        match std::mem::replace(&mut self.state, BatchState::Idle) {
            BatchState::Idle => Step::Done(Err(client_error("unexpected replies".to_string()))),
            BatchState::Sent(per) => {
                if let Err(e) = place_batch(self.core, &per, replies, &mut self.values) {
                    return Step::Done(Err(e));
                }
                self.advance()
            }
            BatchState::One(mut one) => match one.next(replies).into_owned() {
                Step::Send(requests) => {
                    self.state = BatchState::One(one);
                    Step::Send(requests)
                }
                Step::Wait(d) => {
                    self.state = BatchState::One(one);
                    Step::Wait(d)
                }
                Step::Done(result) => match self.place_one(result) {
                    Ok(()) => self.advance(),
                    Err(e) => Step::Done(Err(e)),
                },
            },
        }
    }
}
