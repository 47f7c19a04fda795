//! The agent's side: what to send, when to give up on it, where to resume, what to trim.
//!
//! Inputs: [`Agent::appended`] (a seq became durable in the spool), [`Agent::connected`] /
//! [`Agent::disconnected`], [`Agent::on_ack`] (the server's watermark), [`Agent::on_tick`]
//! (time passes). Outputs: [`Agent::poll_send`] (which range to read from the spool and send),
//! the [`AckEffect`] of an ack (what the spool may trim), [`Agent::next_deadline`] (when the
//! driver must tick next) and [`Agent::take_ack_request`] (re-read the server's retained ack).
//!
//! Sending is go-back-N over a bounded window: batches are sent in seq order from the server's
//! watermark + 1. A batch is given up only once the server's own answer says it lacks it:
//! - when the oldest unacknowledged batch times out, the agent first asks for the server's
//!   current watermark (the driver re-reads the retained ack), again every `resume_wait_ms`,
//!   and sends nothing new meanwhile: batches the answer covers are acknowledged (only their
//!   ack was lost or late), the rest of the window is abandoned and sending restarts at
//!   watermark + 1. A link that stays silent for another `resend_timeout_ms` gets the whole
//!   window again (unless the transport declares it down first: then the reconnect settles
//!   it), so nothing more is put on a link that has gone silent than one batch per timeout;
//! - when the link drops, the window is kept, unsent to, until the next connect: the agent then
//!   waits (briefly) for the retained acknowledgement, which settles the window the same way,
//!   so that it resumes exactly where the server is rather than where its own possibly stale
//!   copy of the watermark is, and does not count as lost a batch that arrived just before the
//!   link went.

use std::collections::VecDeque;

/// Tuning of the send window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    /// Most events in one batch.
    pub max_batch_events: usize,
    /// Most (approximate, uncompressed) event bytes in one batch.
    pub max_batch_bytes: usize,
    /// Most batches in flight (sent, not yet acknowledged).
    pub max_inflight_batches: usize,
    /// A batch not acknowledged this long after it was sent is given up (go back to watermark + 1)
    /// unless the server's current watermark, asked for then (for at most as long again),
    /// shows that it arrived.
    pub resend_timeout_ms: u64,
    /// After a connect, how long to wait for the retained acknowledgement before sending from the
    /// locally known watermark; after a timeout, how often to ask again for the retained
    /// acknowledgement while none comes (0: give up on a timed-out window at once).
    pub resume_wait_ms: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            max_batch_events: 500,
            max_batch_bytes: 256 << 10,
            max_inflight_batches: 4,
            resend_timeout_ms: 15_000,
            resume_wait_ms: 3_000,
        }
    }
}

/// What the spool persists for the agent (everything else is volatile).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AgentDurable {
    /// Highest seq appended (durable), 0 if none.
    pub last_seq: u64,
    /// Highest watermark the server acknowledged, 0 if none.
    pub acked: u64,
}

/// The driver asked for something the protocol forbids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// Seqs are appended densely.
    #[error("appended seq {got}, expected {expected}")]
    NotNext {
        /// The next seq.
        expected: u64,
        /// What the driver reported.
        got: u64,
    },
    /// The durable state claims an ack beyond the spool.
    #[error("acked watermark {acked} is beyond the last appended seq {last_seq}")]
    AckedBeyondSpool {
        /// Acked watermark.
        acked: u64,
        /// Last seq.
        last_seq: u64,
    },
    /// A sent range that does not match the request.
    #[error("sent {first}..={last}, but the window allows {expected_first}..={max_last}")]
    BadSend {
        /// First seq sent.
        first: u64,
        /// Last seq sent.
        last: u64,
        /// The seq that had to come first.
        expected_first: u64,
        /// The highest seq the request allowed.
        max_last: u64,
    },
}

/// Which range the driver should read from the spool, encode and send now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchRequest {
    /// First seq of the batch: always the next unsent seq after the watermark.
    pub first_seq: u64,
    /// Most events to put in it.
    pub max_events: usize,
    /// Most (approximate) event bytes to put in it.
    pub max_bytes: usize,
}

impl BatchRequest {
    /// Whether a batch built for `self` is a valid answer to `asked`: the same first seq and
    /// byte limit, and no more events than `asked` allows ([`Agent::sent`] takes any batch
    /// from the next unsent seq up to the request's end). A driver that builds ahead may send
    /// what it built when the agent's request has since grown, instead of building again.
    pub fn answers(&self, asked: &BatchRequest) -> bool {
        self.first_seq == asked.first_seq
            && self.max_bytes == asked.max_bytes
            && self.max_events <= asked.max_events
    }
}

/// What an acknowledgement changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckEffect {
    /// The watermark moved: the spool may now trim every seq `<= trim_to`.
    Advanced {
        /// New watermark.
        trim_to: u64,
    },
    /// Nothing new (a duplicate or retained ack at or below what is known).
    Stale,
    /// The server acknowledges seqs this agent never appended: the server is talking about
    /// another spool of the same replica (a restored backup, a cloned device). Ignored; the
    /// driver must alert.
    BeyondSpool {
        /// The watermark received.
        watermark: u64,
    },
}

/// Counters for metrics and the simulator's failure rate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentStats {
    /// Batches handed to the transport.
    pub batches_sent: u64,
    /// Batches fully covered by an ack.
    pub batches_acked: u64,
    /// Batches abandoned (timeout or link loss) before they were fully acknowledged.
    pub batches_failed: u64,
    /// Of the acknowledged batches, those acknowledged only by the answer to a confirmation
    /// (after their timeout or a reconnect): the go-back-N of earlier versions abandoned them.
    pub batches_confirmed: u64,
    /// Resend timeouts (each starts a confirmation).
    pub timeouts: u64,
    /// Acks received.
    pub acks: u64,
    /// Connects (resumes).
    pub resumes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    /// No transport. The window is kept (nothing is sent to it) until the next connect settles
    /// it.
    Down,
    /// Connected, waiting for the retained ack until the given time.
    Resuming {
        until_ms: u64,
    },
    Up,
    /// The oldest batch timed out: waiting for the server's current watermark (the re-read
    /// retained ack) until `until_ms`, asking again at `ask_ms`, sending nothing new.
    Confirming {
        until_ms: u64,
        ask_ms: u64,
    },
}

#[derive(Clone, Copy, Debug)]
struct InFlight {
    last: u64,
    sent_at_ms: u64,
}

/// The agent's protocol state. Create it from the spool's [`AgentDurable`] on every start.
#[derive(Clone, Debug)]
pub struct Agent {
    cfg: AgentConfig,
    last_seq: u64,
    acked: u64,
    link: Link,
    inflight: VecDeque<InFlight>,
    /// Next seq to send.
    next_send: u64,
    /// The driver should re-read the server's retained ack.
    ack_requested: bool,
    stats: AgentStats,
}

impl Agent {
    /// Starts (or restarts after a crash) from durable state; the link is down.
    pub fn new(cfg: AgentConfig, durable: AgentDurable) -> Result<Self, AgentError> {
        if durable.acked > durable.last_seq {
            return Err(AgentError::AckedBeyondSpool {
                acked: durable.acked,
                last_seq: durable.last_seq,
            });
        }
        Ok(Self {
            cfg,
            last_seq: durable.last_seq,
            acked: durable.acked,
            link: Link::Down,
            inflight: VecDeque::new(),
            next_send: durable.acked + 1,
            ack_requested: false,
            stats: AgentStats::default(),
        })
    }

    /// What the spool must persist.
    pub fn durable(&self) -> AgentDurable {
        AgentDurable {
            last_seq: self.last_seq,
            acked: self.acked,
        }
    }

    /// Highest acknowledged seq.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Highest appended seq.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Events appended but not acknowledged.
    pub fn unacked(&self) -> u64 {
        self.last_seq - self.acked
    }

    /// Batches in flight.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// The seq ranges of the batches in flight, oldest first, each from the one before it (the
    /// oldest from the acknowledged watermark + 1).
    pub fn inflight_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut first = self.acked + 1;
        self.inflight.iter().map(move |f| {
            let range = (first, f.last);
            first = f.last + 1;
            range
        })
    }

    /// Whether the agent is connected and past its resume wait.
    pub fn is_streaming(&self) -> bool {
        self.link == Link::Up
    }

    /// Counters.
    pub fn stats(&self) -> AgentStats {
        self.stats
    }

    /// Seq `seq` is now durable in the spool.
    pub fn appended(&mut self, seq: u64) -> Result<(), AgentError> {
        if seq != self.last_seq + 1 {
            return Err(AgentError::NotNext {
                expected: self.last_seq + 1,
                got: seq,
            });
        }
        self.last_seq = seq;
        Ok(())
    }

    /// The transport connected (MQTT session up, ack topic subscribed). Batches still in flight
    /// from before wait for the retained ack to say whether they arrived.
    pub fn connected(&mut self, now_ms: u64) {
        self.stats.resumes += 1;
        self.ack_requested = false;
        self.link = Link::Resuming {
            until_ms: now_ms.saturating_add(self.cfg.resume_wait_ms),
        };
    }

    /// The transport is gone: nothing is sent until the next connect, whose retained ack
    /// settles what was in flight.
    pub fn disconnected(&mut self) {
        self.ack_requested = false;
        self.link = Link::Down;
    }

    /// Whether the agent asks for the server's current watermark (once per request; check after
    /// [`Agent::on_tick`]): the driver re-reads the retained ack (MQTT: subscribes to the ack
    /// topic again, and the broker sends the retained message again) and hands it to
    /// [`Agent::on_ack`]. A driver that does not still works, but a timed-out batch then waits
    /// up to another `resend_timeout_ms` before it is sent again.
    pub fn take_ack_request(&mut self) -> bool {
        std::mem::take(&mut self.ack_requested)
    }

    fn abandon_inflight(&mut self) {
        self.stats.batches_failed += self.inflight.len() as u64;
        self.inflight.clear();
        self.next_send = self.acked + 1;
    }

    /// The server answered a confirmation (or it ran out): what it did not cover is given up.
    fn settle(&mut self, now_ms: u64) {
        let resuming = matches!(self.link, Link::Resuming { .. });
        let overdue = self
            .inflight
            .front()
            .is_some_and(|f| now_ms >= f.sent_at_ms.saturating_add(self.cfg.resend_timeout_ms));
        // After a reconnect nothing of the old session is still on its way; after a timeout,
        // a window whose (new) oldest batch is not overdue yet is simply waited for.
        if resuming || overdue {
            self.abandon_inflight();
        }
        self.link = Link::Up;
    }

    /// The server's watermark for this replica arrived (an ack, or the retained one on connect
    /// or on request).
    pub fn on_ack(&mut self, watermark: u64, now_ms: u64) -> AckEffect {
        self.stats.acks += 1;
        let confirming = matches!(self.link, Link::Resuming { .. } | Link::Confirming { .. });
        let effect = if watermark > self.last_seq {
            AckEffect::BeyondSpool { watermark }
        } else if watermark <= self.acked {
            AckEffect::Stale
        } else {
            self.acked = watermark;
            while self.inflight.front().is_some_and(|f| f.last <= watermark) {
                self.inflight.pop_front();
                self.stats.batches_acked += 1;
                if confirming {
                    self.stats.batches_confirmed += 1;
                }
            }
            // The server may be ahead of what this session sent (an earlier session's batches
            // arrived late): never send what it has.
            self.next_send = self.next_send.max(watermark + 1);
            AckEffect::Advanced { trim_to: watermark }
        };
        if confirming {
            self.settle(now_ms);
        }
        effect
    }

    /// The retained ack the driver read (on connect, or asked for) is another replica's: the
    /// lanes of one device share its ack topic, which retains one ack, the latest of any lane.
    /// No answer for this replica is coming, so a resume wait or a confirmation settles now, as
    /// if it had run out (the window is given up and sent again from the local watermark),
    /// instead of holding this replica back for `resume_wait_ms`.
    pub fn on_retained_ack_of_another(&mut self, now_ms: u64) {
        if matches!(self.link, Link::Resuming { .. } | Link::Confirming { .. }) {
            self.settle(now_ms);
        }
    }

    /// Time passed: ends a resume wait or a confirmation, and starts a confirmation when the
    /// oldest batch in flight timed out.
    pub fn on_tick(&mut self, now_ms: u64) {
        match self.link {
            Link::Resuming { until_ms } | Link::Confirming { until_ms, .. }
                if now_ms >= until_ms =>
            {
                self.settle(now_ms);
            }
            Link::Confirming { until_ms, ask_ms } if now_ms >= ask_ms => {
                // No answer yet: the request or its answer may have been lost; ask again.
                self.ack_requested = true;
                self.link = Link::Confirming {
                    until_ms,
                    ask_ms: now_ms.saturating_add(self.cfg.resume_wait_ms),
                };
            }
            _ => {}
        }
        if self.link != Link::Up {
            return;
        }
        if let Some(f) = self.inflight.front() {
            if now_ms >= f.sent_at_ms.saturating_add(self.cfg.resend_timeout_ms) {
                self.stats.timeouts += 1;
                if self.cfg.resume_wait_ms == 0 {
                    self.abandon_inflight(); // no wait configured: give up at once
                    return;
                }
                // Ask every `resume_wait_ms`, for at most another `resend_timeout_ms`: a link
                // that stays silent that long gets the window again (or is declared down by
                // the transport first, and the reconnect settles the window).
                self.ack_requested = true;
                self.link = Link::Confirming {
                    until_ms: now_ms.saturating_add(self.cfg.resend_timeout_ms.max(1)),
                    ask_ms: now_ms.saturating_add(self.cfg.resume_wait_ms),
                };
            }
        }
    }

    /// When the driver must call [`Agent::on_tick`] next, if anything is waiting on time.
    pub fn next_deadline(&self) -> Option<u64> {
        match self.link {
            Link::Down => None,
            Link::Resuming { until_ms } => Some(until_ms),
            Link::Confirming { until_ms, ask_ms } => Some(until_ms.min(ask_ms)),
            Link::Up => self
                .inflight
                .front()
                .map(|f| f.sent_at_ms.saturating_add(self.cfg.resend_timeout_ms)),
        }
    }

    /// The next batch to send, if the link is up, there is unsent data and the window has room.
    pub fn poll_send(&self) -> Option<BatchRequest> {
        if self.link != Link::Up
            || self.next_send > self.last_seq
            || self.inflight.len() >= self.cfg.max_inflight_batches
        {
            return None;
        }
        let available = (self.last_seq - self.next_send + 1).min(usize::MAX as u64) as usize;
        Some(BatchRequest {
            first_seq: self.next_send,
            max_events: self.cfg.max_batch_events.min(available),
            max_bytes: self.cfg.max_batch_bytes,
        })
    }

    /// The driver sent `first..=last` (as asked by [`Agent::poll_send`]) at `now_ms`.
    pub fn sent(&mut self, first: u64, last: u64, now_ms: u64) -> Result<(), AgentError> {
        let max_last = self
            .last_seq
            .min(self.next_send + self.cfg.max_batch_events as u64 - 1);
        if self.link != Link::Up || first != self.next_send || last < first || last > max_last {
            return Err(AgentError::BadSend {
                first,
                last,
                expected_first: self.next_send,
                max_last,
            });
        }
        self.inflight.push_back(InFlight {
            last,
            sent_at_ms: now_ms,
        });
        self.next_send = last + 1;
        self.stats.batches_sent += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AgentConfig {
        AgentConfig {
            max_batch_events: 10,
            max_batch_bytes: 1 << 20,
            max_inflight_batches: 2,
            resend_timeout_ms: 1_000,
            resume_wait_ms: 100,
        }
    }

    fn agent_with(n: u64) -> Agent {
        let mut a = Agent::new(cfg(), AgentDurable::default()).unwrap();
        for s in 1..=n {
            a.appended(s).unwrap();
        }
        a
    }

    fn send_all(a: &mut Agent, now: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        while let Some(r) = a.poll_send() {
            let last = r.first_seq + r.max_events as u64 - 1;
            a.sent(r.first_seq, last, now).unwrap();
            out.push((r.first_seq, last));
        }
        out
    }

    #[test]
    fn a_batch_built_before_the_request_grew_still_answers_it() {
        let req = |first_seq, max_events| BatchRequest {
            first_seq,
            max_events,
            max_bytes: 1 << 20,
        };
        assert!(req(5, 3).answers(&req(5, 3)));
        assert!(
            req(5, 3).answers(&req(5, 10)),
            "fewer events than asked: valid"
        );
        assert!(!req(5, 10).answers(&req(5, 3)), "more than asked");
        assert!(!req(4, 3).answers(&req(5, 10)), "another first seq");
        let mut a = agent_with(3);
        a.connected(0);
        a.on_tick(100);
        let built = a.poll_send().unwrap();
        for seq in 4..=8 {
            a.appended(seq).unwrap();
        }
        let asked = a.poll_send().unwrap();
        assert!(built.answers(&asked));
        let last = built.first_seq + built.max_events as u64 - 1;
        a.sent(built.first_seq, last, 1).unwrap();
        assert_eq!(a.poll_send().unwrap().first_seq, last + 1);
    }

    #[test]
    fn nothing_is_sent_before_the_retained_ack_or_the_resume_wait() {
        let mut a = agent_with(25);
        assert_eq!(a.poll_send(), None, "offline");
        a.connected(0);
        assert_eq!(a.poll_send(), None, "waiting for the retained ack");
        a.on_tick(99);
        assert_eq!(a.poll_send(), None);
        a.on_tick(100);
        assert_eq!(
            send_all(&mut a, 100),
            vec![(1, 10), (11, 20)],
            "window of two"
        );
    }

    #[test]
    fn reconnect_resumes_from_server_watermark_not_local_copy() {
        let mut a = agent_with(25);
        a.connected(0);
        // The retained ack says the server already has 1..=12 (an ack this agent missed).
        assert_eq!(a.on_ack(12, 5), AckEffect::Advanced { trim_to: 12 });
        assert_eq!(send_all(&mut a, 5), vec![(13, 22), (23, 25)]);
    }

    #[test]
    fn timeout_asks_for_the_watermark_until_the_link_answers_or_stays_silent() {
        let mut a = agent_with(25);
        a.connected(0);
        a.on_ack(0, 1);
        send_all(&mut a, 1);
        assert_eq!(a.on_ack(10, 50), AckEffect::Advanced { trim_to: 10 });
        assert_eq!(a.next_deadline(), Some(1_001));
        a.on_tick(1_001);
        assert_eq!(a.stats().timeouts, 1);
        assert!(
            a.take_ack_request(),
            "the driver is asked to re-read the retained ack"
        );
        assert!(!a.take_ack_request(), "once per ask");
        assert_eq!(a.poll_send(), None, "nothing new goes out while confirming");
        assert_eq!(a.next_deadline(), Some(1_101));
        a.on_tick(1_101);
        assert!(a.take_ack_request(), "no answer yet: asked again");
        assert_eq!(a.stats().batches_failed, 0);
        assert_eq!(a.next_deadline(), Some(1_201));
        for t in (1_201..2_001).step_by(100) {
            a.on_tick(t);
        }
        assert_eq!(a.next_deadline(), Some(2_001));
        a.on_tick(2_001); // a silent link for another resend timeout: the window is given up
        assert_eq!(a.stats().batches_failed, 1);
        assert_eq!(a.stats().timeouts, 1);
        assert_eq!(send_all(&mut a, 2_001), vec![(11, 20), (21, 25)]);
    }

    #[test]
    fn a_timed_out_batch_the_server_has_is_acknowledged_not_sent_again() {
        let mut a = agent_with(25);
        a.connected(0);
        a.on_ack(0, 0);
        assert_eq!(send_all(&mut a, 0), vec![(1, 10), (11, 20)]);
        a.on_tick(1_000); // both acks were lost
        assert!(a.take_ack_request());
        // The retained ack, re-read: the server has everything that was sent.
        assert_eq!(a.on_ack(20, 1_050), AckEffect::Advanced { trim_to: 20 });
        let s = a.stats();
        assert_eq!(
            (s.batches_acked, s.batches_confirmed, s.batches_failed),
            (2, 2, 0)
        );
        assert_eq!(
            send_all(&mut a, 1_050),
            vec![(21, 25)],
            "on from the watermark"
        );
    }

    #[test]
    fn an_answer_that_lacks_the_batch_gives_the_window_up_at_once() {
        let mut a = agent_with(25);
        a.connected(0);
        a.on_ack(0, 0);
        send_all(&mut a, 0);
        a.on_tick(1_000);
        assert!(a.take_ack_request());
        // The server has the first batch but not the second (lost): go back to 11 now.
        assert_eq!(a.on_ack(10, 1_020), AckEffect::Advanced { trim_to: 10 });
        let s = a.stats();
        assert_eq!((s.batches_confirmed, s.batches_failed), (1, 1));
        assert_eq!(send_all(&mut a, 1_020), vec![(11, 20), (21, 25)]);
        // A stale answer settles it too.
        a.on_tick(2_020);
        assert!(a.take_ack_request());
        assert_eq!(a.on_ack(10, 2_030), AckEffect::Stale);
        assert_eq!(a.stats().batches_failed, 3);
        assert_eq!(a.poll_send().unwrap().first_seq, 11);
    }

    #[test]
    fn a_late_ack_during_a_confirmation_keeps_what_is_not_overdue() {
        let mut a = agent_with(25);
        a.connected(0);
        a.on_ack(0, 0);
        assert_eq!(send_all(&mut a, 0), vec![(1, 10), (11, 20)]);
        a.on_ack(10, 600);
        assert_eq!(send_all(&mut a, 600), vec![(21, 25)]);
        assert_eq!(
            a.inflight_ranges().collect::<Vec<_>>(),
            vec![(11, 20), (21, 25)]
        );
        a.on_tick(1_000); // (11, 20), sent at 0, timed out
        assert!(a.take_ack_request());
        assert_eq!(a.on_ack(20, 1_010), AckEffect::Advanced { trim_to: 20 });
        // (21, 25), sent at 600, is not overdue: it stays in flight.
        assert_eq!(a.inflight(), 1);
        assert_eq!(a.stats().batches_failed, 0);
        assert_eq!(a.next_deadline(), Some(1_600));
    }

    #[test]
    fn a_disconnect_keeps_the_window_for_the_retained_ack_to_settle() {
        let mut a = agent_with(30);
        a.connected(0);
        a.on_ack(5, 0);
        assert_eq!(send_all(&mut a, 0), vec![(6, 15), (16, 25)]);
        a.disconnected();
        assert_eq!(a.poll_send(), None);
        assert_eq!(
            a.next_deadline(),
            None,
            "no timeouts while the link is down"
        );
        a.on_tick(5_000);
        assert_eq!(a.stats().timeouts, 0);
        a.connected(6_000);
        // The first batch arrived before the link went; its ack was lost with it.
        assert_eq!(a.on_ack(15, 6_010), AckEffect::Advanced { trim_to: 15 });
        let s = a.stats();
        assert_eq!((s.batches_confirmed, s.batches_failed), (1, 1));
        assert_eq!(send_all(&mut a, 6_010), vec![(16, 25), (26, 30)]);
    }

    /// An agent that sent a window (two batches), lost the link and connected again at 500:
    /// waiting for its retained ack.
    fn reconnected_with_a_window_out() -> Agent {
        let mut a = agent_with(30);
        a.connected(0);
        a.on_tick(100);
        send_all(&mut a, 100);
        a.disconnected();
        a.connected(500);
        a
    }

    #[test]
    fn without_a_retained_ack_the_window_is_given_up_after_the_resume_wait() {
        let mut a = reconnected_with_a_window_out();
        a.on_tick(600);
        assert_eq!(a.stats().batches_failed, 2);
        assert_eq!(a.poll_send().unwrap().first_seq, 1);
    }

    #[test]
    fn another_replica_s_retained_ack_ends_the_resume_wait_at_once() {
        let mut a = reconnected_with_a_window_out();
        assert!(a.poll_send().is_none(), "waits for its retained ack");
        a.on_retained_ack_of_another(510);
        assert_eq!(a.stats().batches_failed, 2);
        assert_eq!(a.poll_send().unwrap().first_seq, 1);
        // Streaming: another lane's ack changes nothing.
        send_all(&mut a, 520);
        a.on_retained_ack_of_another(530);
        assert_eq!(a.inflight(), 2);
    }

    #[test]
    fn disconnect_sends_nothing_and_a_restart_resumes_at_the_durable_watermark() {
        let mut a = agent_with(30);
        a.connected(0);
        a.on_ack(5, 0);
        send_all(&mut a, 0);
        a.disconnected();
        assert_eq!(a.poll_send(), None);
        assert_eq!(
            a.durable(),
            AgentDurable {
                last_seq: 30,
                acked: 5
            }
        );
        let mut b = Agent::new(cfg(), a.durable()).unwrap(); // crash and restart
        b.connected(10);
        b.on_tick(110);
        assert_eq!(b.poll_send().unwrap().first_seq, 6);
    }

    #[test]
    fn stale_and_foreign_acks_change_nothing() {
        let mut a = agent_with(5);
        a.connected(0);
        assert_eq!(a.on_ack(3, 0), AckEffect::Advanced { trim_to: 3 });
        assert_eq!(a.on_ack(2, 0), AckEffect::Stale);
        assert_eq!(a.on_ack(9, 0), AckEffect::BeyondSpool { watermark: 9 });
        assert_eq!(a.acked(), 3);
    }

    #[test]
    fn the_driver_cannot_break_the_window() {
        let mut a = agent_with(25);
        assert!(a.appended(27).is_err(), "seqs are dense");
        a.connected(0);
        a.on_tick(100);
        assert!(a.sent(2, 5, 0).is_err(), "must start at the watermark + 1");
        assert!(a.sent(1, 11, 0).is_err(), "at most max_batch_events");
        assert!(Agent::new(
            cfg(),
            AgentDurable {
                last_seq: 1,
                acked: 2
            }
        )
        .is_err());
    }
}
