//! The fleet view: `con ledger` and `con status` as officers, operators and
//! workers, through the real daemon as the real agent users; the daily
//! ledger files the daemon writes.

use std::process::Output;
use std::time::Duration;

use con_llm_script::{Reply, ScriptedServer};
use serde_json::Value;

use crate::CON;
use crate::runs::{Conspiracy, agent, ok, stdout, wait_for};

/// `con <args>` as an agent's user.
fn con_as(c: &Conspiracy, agent: &str, args: &[&str]) -> Output {
    c.user(agent)
        .command(CON)
        .args(c.root.con_flags())
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .current_dir("/")
        .output()
        .unwrap()
}

fn refused(out: &Output) -> String {
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A concierge (operator), a strategist (officer) and a scribe (worker);
/// `fleet_view` is appended as the config's `[fleet_view]` table, if any.
fn fleet(model: &ScriptedServer, fleet_view: &str) -> Conspiracy {
    Conspiracy::new(
        "openai-compatible",
        &model.base_url(),
        &[
            agent("concierge", "operator", ""),
            agent("scribe", "worker", ""),
            agent("strategist", "officer", fleet_view),
        ],
    )
}

const SECRET_TASK: &str = "The launch code is swordfish; what should we do?";
const SECRET_ANSWER: &str = "Keep swordfish to yourself.";

#[test]
fn an_officer_sees_the_ledger_and_the_fleet_without_content() {
    let model = ScriptedServer::start(vec![]);
    // 1 USD and 2 USD per million tokens: 0.1 + 0.1 USD.
    model.push(
        Reply::text(SECRET_ANSWER)
            .with_usage(100_000, 50_000)
            .into(),
    );
    let c = fleet(&model, "");
    let _daemon = c.daemon();
    c.task("concierge", "t-1", SECRET_TASK);
    ok(&c.run("concierge", &[]));

    // The ledger, as the officer: the concierge's finished task, its
    // outcome and cost, nothing it said or was told.
    let text = stdout(&con_as(&c, "strategist", &["ledger", "--json"]));
    assert!(!text.contains("swordfish"), "{text}");
    let entries = json_lines(&text);
    assert_eq!(entries.len(), 1, "{text}");
    let e = &entries[0];
    assert_eq!(e["agent"], "concierge");
    assert_eq!(e["task"], "t-1");
    assert_eq!(e["model"], "test-model");
    assert_eq!(e["trust"], "verified");
    assert_eq!(e["outcome"], "ok");
    assert_eq!(e["cost_micro_usd"], 200_000);
    assert_eq!(e["model_calls"], 1);
    assert!(e["duration_ms"].as_u64().is_some());
    let session = e["session"].as_str().unwrap().to_owned();
    let mut keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "agent",
            "cost_micro_usd",
            "duration_ms",
            "ended_unix_nanos",
            "model",
            "model_calls",
            "outcome",
            "seq",
            "session",
            "task",
            "time",
            "trust"
        ]
    );

    // Filters.
    let none = stdout(&con_as(
        &c,
        "strategist",
        &["ledger", "--json", "--agent", "scribe"],
    ));
    assert!(none.is_empty(), "{none}");
    let later = stdout(&con_as(
        &c,
        "strategist",
        &["ledger", "--json", "--since", "2999-01-01"],
    ));
    assert!(later.is_empty(), "{later}");
    let human = stdout(&con_as(&c, "strategist", &["ledger", "--since", "1h"]));
    assert!(
        human.contains("concierge") && human.contains("$0.2000"),
        "{human}"
    );

    // The session's content stays the concierge's.
    let replay = refused(&con_as(&c, "strategist", &["replay", &session]));
    assert!(replay.contains("among the events you may read"), "{replay}");
    let listing = refused(&con_as(
        &c,
        "strategist",
        &["replay", "--agent", "concierge"],
    ));
    assert!(
        listing.contains("may not read the events of agent"),
        "{listing}"
    );

    // The daily file: written by the daemon, the same entries as the JSON.
    let date = &e["time"].as_str().unwrap()[..10];
    let file = c
        .root
        .path()
        .join("srv/con/ledger")
        .join(format!("{date}.tsv"));
    wait_for("the ledger file", Duration::from_secs(10), || {
        std::fs::read_to_string(&file).is_ok_and(|t| t.lines().count() == 2)
    });
    let tsv = std::fs::read_to_string(&file).unwrap();
    assert!(!tsv.contains("swordfish"), "{tsv}");
    let mut lines = tsv.lines();
    let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
    let row: Vec<&str> = lines.next().unwrap().split('\t').collect();
    assert_eq!(header.len(), row.len());
    for (column, value) in header.iter().zip(&row) {
        let json = match &e[*column] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        assert_eq!(*value, json, "column {column}");
    }

    // The officer's status is the fleet's; the worker's only its own row.
    let view: Value =
        serde_json::from_str(&stdout(&con_as(&c, "strategist", &["status", "--json"]))).unwrap();
    assert_eq!(view["caller"]["sees_fleet"], true);
    assert!(view["log"].is_null(), "operators only");
    let names: Vec<&str> = view["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["concierge", "scribe", "strategist"]);
    let concierge = &view["agents"][0];
    assert_eq!(concierge["last_outcome"], "ok");
    assert_eq!(concierge["spent_today_micro_usd"], 200_000);
    let text = stdout(&con_as(&c, "strategist", &["status"]));
    assert!(
        text.contains("seeing the fleet") && text.contains("scribe"),
        "{text}"
    );

    let view: Value =
        serde_json::from_str(&stdout(&con_as(&c, "scribe", &["status", "--json"]))).unwrap();
    assert_eq!(view["caller"]["sees_fleet"], false);
    assert_eq!(view["agents"].as_array().unwrap().len(), 1);
    assert_eq!(view["agents"][0]["name"], "scribe");
    assert!(view["outer_inbox_depth"].is_null());

    // Neither the worker nor an operator the config does not name gets
    // the ledger.
    for who in ["scribe", "concierge"] {
        let err = refused(&con_as(&c, who, &["ledger"]));
        assert!(
            err.contains("the ledger is for operators, officers"),
            "{err}"
        );
    }
}

#[test]
fn operators_see_the_fleet_where_the_config_says_so() {
    let model = ScriptedServer::start(vec![]);
    let c = fleet(&model, "\n[fleet_view]\noperators = true");
    let _daemon = c.daemon();
    let text = stdout(&con_as(&c, "concierge", &["ledger", "--json"]));
    assert!(text.is_empty(), "{text}");
    let view: Value =
        serde_json::from_str(&stdout(&con_as(&c, "concierge", &["status", "--json"]))).unwrap();
    assert_eq!(view["caller"]["sees_fleet"], true);
    assert_eq!(view["agents"].as_array().unwrap().len(), 3);
    let err = refused(&con_as(&c, "scribe", &["ledger"]));
    assert!(err.contains("the ledger is for"), "{err}");
}
