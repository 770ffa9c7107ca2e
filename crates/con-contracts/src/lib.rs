//! Contracts: YAML files in the contracts directory, each a set of checks
//! of the host with what to do when one fails.
//!
//! [`parse`] (text to [`Contract`]) and [`decide`] (an exit to an outcome,
//! a result to a transition and an action, escalation once per incident)
//! are pure. [`load`] reads a directory, [`run`] runs one check through
//! `con-process`; the daemon is what calls them and records each result as
//! `contract.result`.

pub mod decide;
pub mod load;
pub mod model;
pub mod parse;
pub mod run;

pub use decide::{
    CheckKey, CheckState, CheckStates, Decision, Transition, decide, decide_on_fail, is_failure,
    outcome_of_exit,
};
pub use load::{Loaded, LoadedContract, load_dir};
pub use model::{Action, Check, Contract, ContractType, OnFail, Probe, Scope, stored_name};
pub use parse::{ContractError, parse_contract};
pub use run::{CheckResult, run_check};
