//! Durable rollouts (issue 11) through the real binary: `coalmine run` killed with SIGKILL
//! in every phase and restarted ([`crash`]), and the operator's verbs against a running
//! controller and against the store ([`verbs`]), step plans with pauses and gates ([`plans`]), dry runs ([`dry_run`]), a gate refusal across a kill ([`gate_restart`]). Both drive the same rig ([`rig`]): an
//! `exec` provider (a script) or an `http` provider (a fake flag service in the test
//! process), and a deterministic fake Prometheus.

mod crash;
mod dry_run;
mod gate_restart;
mod plans;
pub(crate) mod rig;
mod verbs;
