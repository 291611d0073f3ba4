//! The state of one shard this worker holds a lease for.
//!
//! One enum instead of a set of flags, so that the combinations that cannot
//! happen cannot be written either: a halted shard is not "running" to keep
//! it from restarting, it is `Halted`, and nothing moves it back to
//! `Reading`. Pure: no clock, no I/O; the coordinator carries out what a
//! transition implies (spawning a consumer, handing the lease over).

/// Where a held shard is in its life on this worker.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ShardState {
    /// The lease is held but no consumer runs yet: its parents are still
    /// being read (here or elsewhere).
    #[default]
    WaitingForParents,
    /// A consumer is reading the shard.
    Reading,
    /// Another worker asked for the lease: the consumer (if any) stops at
    /// its next batch boundary and the lease then goes to `to`.
    HandingOff {
        /// The worker that asked for the lease.
        to: String,
    },
    /// The consumer stopped on records it could neither process nor store:
    /// the lease is kept so no worker reads past them, and the shard is not
    /// restarted until this worker is.
    Halted {
        /// Why the consumer halted, as it reported it.
        reason: String,
    },
}

/// A transition the current state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a shard that is {from} cannot {action}")]
pub struct Refused {
    from: &'static str,
    action: &'static str,
}

/// When a requested hand-off can be carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handoff {
    /// No consumer runs: hand the lease over now.
    Now,
    /// Stop the consumer; hand the lease over when it has stopped.
    AfterBatch,
}

impl ShardState {
    /// The state's name in logs and refusals.
    fn name(&self) -> &'static str {
        match self {
            ShardState::WaitingForParents => "waiting for its parents",
            ShardState::Reading => "reading",
            ShardState::HandingOff { .. } => "handing off",
            ShardState::Halted { .. } => "halted",
        }
    }

    fn refuse(&self, action: &'static str) -> Refused {
        Refused {
            from: self.name(),
            action,
        }
    }

    /// Whether a consumer task runs for the shard (and will report an exit).
    pub fn has_consumer(&self) -> bool {
        matches!(self, ShardState::Reading | ShardState::HandingOff { .. })
    }

    /// Whether a consumer may be started once the parents are done.
    pub fn may_start(&self) -> bool {
        matches!(self, ShardState::WaitingForParents)
    }

    /// Whether the entry can be dropped at once when its lease is lost:
    /// only a shard with no consumer to report its exit, and not halted (a
    /// halted shard stays visible until an operator restarts the worker).
    pub fn forget_when_lost(&self) -> bool {
        matches!(self, ShardState::WaitingForParents)
    }

    /// The reason a halted shard halted.
    pub fn halted(&self) -> Option<&str> {
        match self {
            ShardState::Halted { reason } => Some(reason),
            _ => None,
        }
    }

    /// Whether the lease is promised to another worker.
    pub fn is_handing_off(&self) -> bool {
        matches!(self, ShardState::HandingOff { .. })
    }

    /// A consumer was started: waiting → reading.
    pub fn start(&mut self) -> Result<(), Refused> {
        match self {
            ShardState::WaitingForParents => {
                *self = ShardState::Reading;
                Ok(())
            }
            _ => Err(self.refuse("start reading")),
        }
    }

    /// Another worker asked for the lease. A shard already handing off, or
    /// halted (its lease must stay here), refuses.
    pub fn request_handoff(&mut self, to: &str) -> Result<Handoff, Refused> {
        let when = match self {
            ShardState::WaitingForParents => Handoff::Now,
            ShardState::Reading => Handoff::AfterBatch,
            _ => return Err(self.refuse("be handed off")),
        };
        *self = ShardState::HandingOff { to: to.to_owned() };
        Ok(when)
    }

    /// The consumer halted: reading or handing off → halted, for good.
    pub fn halt(&mut self, reason: String) -> Result<(), Refused> {
        match self {
            ShardState::Reading | ShardState::HandingOff { .. } => {
                *self = ShardState::Halted { reason };
                Ok(())
            }
            _ => Err(self.refuse("halt")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn halted() -> ShardState {
        let mut state = ShardState::default();
        state.start().unwrap();
        state.halt("poison".to_owned()).unwrap();
        state
    }

    #[test]
    fn a_new_shard_waits_then_reads() {
        let mut state = ShardState::default();
        assert_eq!(state, ShardState::WaitingForParents);
        assert!(state.may_start());
        assert!(!state.has_consumer());
        assert!(state.forget_when_lost());
        state.start().unwrap();
        assert_eq!(state, ShardState::Reading);
        assert!(state.has_consumer());
        assert!(!state.may_start());
        assert!(!state.forget_when_lost());
    }

    #[test]
    fn a_reading_shard_cannot_start_again() {
        let mut state = ShardState::Reading;
        assert!(state.start().is_err());
        assert_eq!(state, ShardState::Reading);
    }

    #[test]
    fn a_waiting_shard_is_handed_off_now_and_a_reading_one_after_its_batch() {
        let mut waiting = ShardState::default();
        assert_eq!(waiting.request_handoff("b"), Ok(Handoff::Now));
        assert_eq!(waiting, ShardState::HandingOff { to: "b".into() });
        let mut reading = ShardState::Reading;
        assert_eq!(reading.request_handoff("b"), Ok(Handoff::AfterBatch));
        assert!(reading.is_handing_off());
        assert!(reading.has_consumer(), "the consumer still has to stop");
    }

    #[test]
    fn a_shard_handing_off_refuses_a_second_request_and_a_restart() {
        let mut state = ShardState::Reading;
        state.request_handoff("b").unwrap();
        assert!(state.request_handoff("c").is_err());
        assert!(state.start().is_err());
        assert_eq!(state, ShardState::HandingOff { to: "b".into() });
        assert!(!state.may_start());
    }

    #[test]
    fn a_halted_shard_never_reads_again_nor_hands_off() {
        let mut state = halted();
        assert_eq!(state.halted(), Some("poison"));
        assert!(state.start().is_err());
        assert!(state.request_handoff("b").is_err());
        assert!(state.halt("again".to_owned()).is_err());
        assert_eq!(state.halted(), Some("poison"));
        assert!(!state.may_start());
        assert!(!state.has_consumer());
        assert!(!state.forget_when_lost(), "kept for the operator to see");
    }

    #[test]
    fn a_shard_halts_while_handing_off() {
        let mut state = ShardState::Reading;
        state.request_handoff("b").unwrap();
        state.halt("poison".to_owned()).unwrap();
        assert_eq!(state.halted(), Some("poison"));
        assert!(!state.is_handing_off());
    }

    #[test]
    fn a_shard_that_never_ran_cannot_halt() {
        let mut state = ShardState::default();
        let refused = state.halt("poison".to_owned()).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "a shard that is waiting for its parents cannot halt"
        );
        assert_eq!(state, ShardState::WaitingForParents);
    }
}
