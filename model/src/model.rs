//! The claim protocol as a [`stateright::Model`]: clients that send and retry one key, handlers
//! that run, pause and write downstream, a store that loses replies and fails over, and time.
//!
//! Every action is one atomic step. Nothing forces an action to happen at any particular time, so
//! a holder that "pauses" is simply one whose renewals do not come before the lease's ticks run
//! out, and renewals may come at any moment of the handler's run (the code renews every third of
//! the lease; the model checks every timing, which includes that one).

use stateright::Model;

use crate::{
    config::{Bounds, Guards},
    properties,
    request::{Answer, Client, Effect, Settlement, Step, Task},
    store::{
        BeginOutcome, Completion, FencingToken, Fingerprint, LeaseToken, Response, Store, Tick,
    },
};

/// The claim protocol with these guards, explored within these bounds.
#[derive(Clone, Copy, Debug)]
pub struct ProtocolModel {
    /// How far the checker looks.
    pub bounds: Bounds,
    /// Which guards the protocol keeps.
    pub guards: Guards,
}

/// A downstream that takes fenced writes (the handler's database): it refuses a token older
/// than the newest it accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Database {
    /// The newest fencing token it accepted.
    pub newest: Option<FencingToken>,
    /// Writes accepted so far.
    pub accepted: u8,
    /// Writes refused as stale so far.
    pub refused: u8,
}

/// Facts the code does not keep but the properties need.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ghost {
    /// Handler runs that reached their side effect (accepted downstream or not).
    pub side_effects: u8,
    /// A lease ended (as its holder knew it) before its holder completed or released: from
    /// then on "while leases hold" no longer applies to this run.
    pub lapsed: bool,
    /// A `complete` replaced an in-progress record that another request held.
    pub completed_over_another_holder: bool,
    /// The first response replayed to anyone.
    pub first_replay: Option<Response>,
    /// After a replay, another response was replayed or the key was acquired again: the
    /// replayed record was lost.
    pub replayed_record_lost: bool,
}

/// The whole system at one moment.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    /// The current tick.
    pub now: Tick,
    /// The key's records.
    pub store: Store,
    /// The next fencing token the store hands out.
    pub next_fence: u8,
    /// One entry per client.
    pub clients: Vec<Client>,
    /// Tasks left behind by requests, sorted (the order they were spawned in does not matter).
    pub tasks: Vec<Task>,
    /// Store calls that may still go wrong.
    pub faults_left: u8,
    /// Failovers that may still happen.
    pub failovers_left: u8,
    /// The handler's downstream.
    pub database: Database,
    /// Bookkeeping for the properties.
    pub ghost: Ghost,
}

/// How a store call goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Delivery {
    /// The script ran and its reply arrived (with replica acks: `WAIT` counted the replica).
    Ok,
    /// The script ran but its reply was lost (a timeout, a connection cut): the caller sees an
    /// error.
    LostReply,
    /// The script never ran (store down, out of memory, a timeout before it ran): an error.
    Failed,
    /// With replica acks: the script ran on the primary, `WAIT` counted too few replicas
    /// (`StoreError::Unreplicated`).
    Unreplicated,
}

/// One step of one participant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// A client sends its next request; the layer calls `begin` (`protocol::decide`).
    Begin(u8, Delivery),
    /// The client's handler does its side effect, carrying its fencing token.
    SideEffect(u8),
    /// The client's handler returns: recordable if its write was accepted, else an error that
    /// the default rule releases.
    HandlerReturns(u8),
    /// `keep_renewed` renews the client's lease.
    Renew(u8, Delivery),
    /// `record::settle`: `complete` or `release`.
    Settle(u8, Delivery),
    /// The `ReleaseGuard`'s spawned release, for the request with this token.
    GuardRelease(LeaseToken, Delivery),
    /// `record_later` sends `complete` again, for the request with this token.
    RecordLater(LeaseToken, Delivery),
    /// `record_later` reached its deadline and gives up.
    RecordLaterGivesUp(LeaseToken),
    /// Time passes.
    Tick,
    /// The replica catches up with the primary.
    Replicate,
    /// The primary fails; the replica takes over.
    Failover,
}

impl ProtocolModel {
    /// The full protocol within `bounds`.
    pub fn new(bounds: Bounds) -> Self {
        Self {
            bounds,
            guards: Guards::ALL,
        }
    }

    /// The same model with other guards.
    pub fn with_guards(self, guards: Guards) -> Self {
        Self { guards, ..self }
    }

    /// The fingerprint of client `c`'s requests: all the same, but for the last client's when
    /// `other_fingerprint` is set.
    pub fn fingerprint_of(&self, c: u8) -> Fingerprint {
        let other = self.bounds.other_fingerprint && c + 1 == self.bounds.clients;
        Fingerprint(u8::from(other))
    }

    /// The client that sent the request with `token`.
    pub fn client_of(&self, token: LeaseToken) -> u8 {
        token.0 / self.bounds.attempts
    }

    /// Whether client `c` will send another request.
    fn may_send(&self, client: &Client) -> bool {
        client.step == Step::Idle && client.answer.is_none() && client.sent < self.bounds.attempts
    }

    /// Nothing but time is left to happen.
    pub fn quiescent(&self, state: &State) -> bool {
        state.tasks.is_empty()
            && state
                .clients
                .iter()
                .all(|client| client.step == Step::Idle && !self.may_send(client))
    }

    fn deliveries(&self, state: &State, confirmed: bool) -> Vec<Delivery> {
        let mut deliveries = vec![Delivery::Ok];
        if state.faults_left > 0 {
            deliveries.extend([Delivery::LostReply, Delivery::Failed]);
            if confirmed && self.guards.replica_acks {
                deliveries.push(Delivery::Unreplicated);
            }
        }
        deliveries
    }

    /// Runs one store call on the primary as `delivery` says and returns what the caller hears:
    /// `Ok` with the script's reply, or `Err`. `op` returns the reply, whether it succeeded (the
    /// replies after which `RedisStore` checks the replica acks: `Acquired`, `true`) and whether
    /// the script wrote (what `WAIT` waits for). `None` when `delivery` changes nothing that
    /// `Failed` would not (a lost reply to a script that changed nothing), so that no state is
    /// reached twice under two names.
    fn call<T>(
        &self,
        state: &mut State,
        delivery: Delivery,
        confirmed: bool,
        op: impl FnOnce(&mut Store) -> (T, bool, bool),
    ) -> Option<Result<T, ()>> {
        let acked = confirmed && self.guards.replica_acks;
        match delivery {
            Delivery::Ok => {
                let (reply, succeeded, wrote) = op(&mut state.store);
                // A `WAIT` that counted the replica: it has every write up to this call's,
                // unless this call wrote nothing and came over a new connection.
                if acked && succeeded && (wrote || !self.bounds.reconnect_after_lost_reply) {
                    state.store.replicate();
                }
                Some(Ok(reply))
            }
            Delivery::Failed => {
                state.faults_left -= 1;
                Some(Err(()))
            }
            Delivery::LostReply => {
                let before = state.store.primary;
                op(&mut state.store);
                if state.store.primary == before {
                    return None;
                }
                state.faults_left -= 1;
                Some(Err(()))
            }
            Delivery::Unreplicated => {
                let (_, succeeded, _) = op(&mut state.store);
                // `WAIT` counts too few replicas only while the replica lacks a write.
                if !acked || !succeeded || state.store.replica == state.store.primary {
                    return None;
                }
                state.faults_left -= 1;
                Some(Err(()))
            }
        }
    }

    /// Records a client's final 2xx or 422.
    fn answer(state: &mut State, c: u8, answer: Answer) {
        if let Answer::Replayed(response) = answer {
            match state.ghost.first_replay {
                Some(first) if first != response => state.ghost.replayed_record_lost = true,
                Some(_) => {}
                None => state.ghost.first_replay = Some(response),
            }
        }
        state.clients[usize::from(c)].answer = Some(answer);
    }

    fn spawn(state: &mut State, task: Task) {
        state.tasks.push(task);
        state.tasks.sort_unstable();
    }

    fn begin(&self, state: &mut State, c: u8, delivery: Delivery) -> Option<()> {
        let (now, lease, guards) = (state.now, self.bounds.lease, self.guards);
        let client = state.clients[usize::from(c)];
        let token = LeaseToken(c * self.bounds.attempts + client.sent);
        let fingerprint = self.fingerprint_of(c);
        let mut next_fence = state.next_fence;
        let reply = self.call(state, delivery, true, |store| {
            let outcome = store.begin(now, lease, &guards, fingerprint, token, &mut next_fence);
            let acquired = matches!(outcome, BeginOutcome::Acquired { .. });
            (outcome, acquired, acquired)
        })?;
        state.next_fence = next_fence;
        state.clients[usize::from(c)].sent += 1;
        match reply {
            Ok(BeginOutcome::Acquired { fencing_token }) => {
                // A retry was replayed, and now the key runs again: that record is gone.
                state.ghost.replayed_record_lost |= state.ghost.first_replay.is_some();
                let client = &mut state.clients[usize::from(c)];
                client.step = Step::Running {
                    token,
                    fence: fencing_token,
                    lease_until: now + lease,
                    renewing: true,
                    effect: Effect::NotYet,
                };
            }
            Ok(BeginOutcome::Completed { response }) => {
                Self::answer(state, c, Answer::Replayed(response));
            }
            Ok(BeginOutcome::Mismatch) => Self::answer(state, c, Answer::KeyReused),
            // 409: the client retries.
            Ok(BeginOutcome::InProgress) => {}
            // 503. `begin` may have acquired the key: the guard, still armed, releases it.
            Err(()) => {
                if delivery != Delivery::Failed {
                    Self::spawn(state, Task::GuardRelease { token });
                }
            }
        }
        Some(())
    }

    fn side_effect(state: &mut State, c: u8) {
        let Step::Running { fence, effect, .. } = &mut state.clients[usize::from(c)].step else {
            unreachable!("only a running handler writes")
        };
        let database = &mut state.database;
        state.ghost.side_effects += 1;
        if database.newest.is_none_or(|newest| *fence >= newest) {
            database.newest = Some(*fence);
            database.accepted += 1;
            *effect = Effect::Accepted;
        } else {
            database.refused += 1;
            *effect = Effect::Refused;
        }
    }

    fn renew(&self, state: &mut State, c: u8, delivery: Delivery) -> Option<()> {
        // A renewal that never ran changes nothing that no renewal at all would not.
        if delivery == Delivery::Failed {
            return None;
        }
        let Step::Running { token, .. } = state.clients[usize::from(c)].step else {
            unreachable!("only a running handler renews")
        };
        let (now, lease, guards) = (state.now, self.bounds.lease, self.guards);
        let reply = self.call(state, delivery, true, |store| {
            // PEXPIRE writes (and replicates) even when the expiry it sets is the one there.
            let renewed = store.renew(now, lease, &guards, token);
            (renewed, renewed, renewed)
        })?;
        let Step::Running {
            lease_until,
            renewing,
            ..
        } = &mut state.clients[usize::from(c)].step
        else {
            unreachable!()
        };
        match reply {
            Ok(true) => *lease_until = now + lease,
            // "lease lost while the handler runs": `keep_renewed` returns, the handler goes on.
            Ok(false) => *renewing = false,
            // "lease renewal failed": it tries again next period.
            Err(()) => {}
        }
        Some(())
    }

    /// `complete` as `settle` and `record_later` call it; notes a completion over another holder.
    fn complete(
        &self,
        state: &mut State,
        c: u8,
        token: LeaseToken,
        response: Response,
        delivery: Delivery,
    ) -> Option<Result<Completion, ()>> {
        let (now, guards, fingerprint) = (state.now, self.guards, self.fingerprint_of(c));
        let mut over_another_holder = false;
        let reply = self.call(state, delivery, true, |store| {
            let completion = store.complete(now, &guards, fingerprint, token, response);
            over_another_holder = completion.over_another_holder;
            (completion, completion.done, completion.wrote)
        })?;
        state.ghost.completed_over_another_holder |= over_another_holder;
        Some(reply)
    }

    fn settle(&self, state: &mut State, c: u8, delivery: Delivery) -> Option<()> {
        let Step::Returned {
            token,
            lease_until,
            settlement,
        } = state.clients[usize::from(c)].step
        else {
            unreachable!("only a returned handler settles")
        };
        match settlement {
            Settlement::Release => {
                // Nobody reads a release's reply: a lost one is an `Ok` under another name.
                if delivery == Delivery::LostReply {
                    return None;
                }
                let now = state.now;
                // Its reply is only logged (`guard::release`).
                let _logged = self.call(state, delivery, false, |store| {
                    let released = store.release(now, token);
                    (released, released, released)
                })?;
                // The client gets its 5xx (or 409) and may retry.
            }
            Settlement::Record(response) => {
                let reply = self.complete(state, c, token, response, delivery)?;
                if reply.is_err() {
                    // "Whatever `complete` says, the key is never released from here."
                    let task = if self.guards.keep_lease_after_failed_complete {
                        Task::RecordLater {
                            token,
                            response,
                            lease_until,
                            deadline: state.now + self.bounds.lease,
                        }
                    } else {
                        Task::GuardRelease { token }
                    };
                    Self::spawn(state, task);
                }
                // `Ok(false)` ("lease lost before completion") and errors alike: the client
                // still gets the response its handler made.
                Self::answer(state, c, Answer::Fresh(response));
            }
        }
        state.clients[usize::from(c)].step = Step::Idle;
        Some(())
    }

    fn task_index(state: &State, token: LeaseToken) -> usize {
        state
            .tasks
            .iter()
            .position(|task| match *task {
                Task::GuardRelease { token: t } | Task::RecordLater { token: t, .. } => t == token,
            })
            .expect("a task for every token named in an action")
    }

    fn tick(&self, state: &mut State) {
        state.now += 1;
        let now = state.now;
        state.store.expire(now);
        if properties::holders(state).any(|(_, lease_until)| lease_until <= now) {
            state.ghost.lapsed = true;
        }
    }

    fn may_tick(&self, state: &State) -> bool {
        state.now < self.bounds.horizon
            || (state.now < self.bounds.horizon + self.bounds.lease
                && self.quiescent(state)
                && state.store.lock(state.now).is_some())
    }
}

impl Model for ProtocolModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let client = Client {
            sent: 0,
            step: Step::Idle,
            answer: None,
        };
        vec![State {
            now: 0,
            store: Store {
                primary: None,
                replica: None,
            },
            next_fence: 1,
            clients: vec![client; usize::from(self.bounds.clients)],
            tasks: Vec::new(),
            faults_left: self.bounds.faults,
            failovers_left: self.bounds.failovers,
            database: Database::default(),
            ghost: Ghost::default(),
        }]
    }

    fn actions(&self, state: &State, actions: &mut Vec<Action>) {
        for (c, client) in (0u8..).zip(&state.clients) {
            match client.step {
                Step::Idle if self.may_send(client) => actions.extend(
                    self.deliveries(state, true)
                        .into_iter()
                        .map(|d| Action::Begin(c, d)),
                ),
                Step::Idle => {}
                Step::Running {
                    effect, renewing, ..
                } => {
                    if effect == Effect::NotYet {
                        actions.push(Action::SideEffect(c));
                    }
                    actions.push(Action::HandlerReturns(c));
                    if renewing {
                        actions.extend(
                            self.deliveries(state, true)
                                .into_iter()
                                .map(|d| Action::Renew(c, d)),
                        );
                    }
                }
                Step::Returned { .. } => actions.extend(
                    self.deliveries(state, true)
                        .into_iter()
                        .map(|d| Action::Settle(c, d)),
                ),
            }
        }
        for task in &state.tasks {
            match *task {
                Task::GuardRelease { token } => actions.extend(
                    self.deliveries(state, false)
                        .into_iter()
                        .filter(|d| *d != Delivery::LostReply)
                        .map(|d| Action::GuardRelease(token, d)),
                ),
                Task::RecordLater {
                    token, deadline, ..
                } if state.now < deadline => actions.extend(
                    self.deliveries(state, true)
                        .into_iter()
                        .map(|d| Action::RecordLater(token, d)),
                ),
                Task::RecordLater { token, .. } => actions.push(Action::RecordLaterGivesUp(token)),
            }
        }
        if self.may_tick(state) {
            actions.push(Action::Tick);
        }
        if state.store.replica != state.store.primary {
            actions.push(Action::Replicate);
            if state.failovers_left > 0 {
                actions.push(Action::Failover);
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut state = last.clone();
        match action {
            Action::Begin(c, delivery) => self.begin(&mut state, c, delivery)?,
            Action::SideEffect(c) => Self::side_effect(&mut state, c),
            Action::HandlerReturns(c) => {
                let client = &mut state.clients[usize::from(c)];
                let Step::Running {
                    token,
                    fence,
                    lease_until,
                    effect,
                    ..
                } = client.step
                else {
                    unreachable!("only a running handler returns")
                };
                let settlement = match effect {
                    Effect::Accepted => Settlement::Record(Response { by: token, fence }),
                    Effect::NotYet | Effect::Refused => Settlement::Release,
                };
                client.step = Step::Returned {
                    token,
                    lease_until,
                    settlement,
                };
            }
            Action::Renew(c, delivery) => self.renew(&mut state, c, delivery)?,
            Action::Settle(c, delivery) => self.settle(&mut state, c, delivery)?,
            Action::GuardRelease(token, delivery) => {
                let i = Self::task_index(&state, token);
                let now = state.now;
                // Its reply is only logged (`guard::release`).
                let _logged = self.call(&mut state, delivery, false, |store| {
                    let released = store.release(now, token);
                    (released, released, released)
                })?;
                state.tasks.remove(i);
            }
            Action::RecordLater(token, delivery) => {
                let i = Self::task_index(&state, token);
                let Task::RecordLater { response, .. } = state.tasks[i] else {
                    unreachable!("a RecordLater action names a RecordLater task")
                };
                let c = self.client_of(token);
                // `Ok(true)`: recorded; `Ok(false)`: the lease is lost; an error: again later.
                if self
                    .complete(&mut state, c, token, response, delivery)?
                    .is_ok()
                {
                    state.tasks.remove(i);
                }
            }
            Action::RecordLaterGivesUp(token) => {
                let i = Self::task_index(&state, token);
                state.tasks.remove(i);
            }
            Action::Tick => self.tick(&mut state),
            Action::Replicate => state.store.replicate(),
            Action::Failover => {
                state.store.failover();
                state.failovers_left -= 1;
            }
        }
        Some(state)
    }

    fn properties(&self) -> Vec<stateright::Property<Self>> {
        properties::all(self)
    }
}
