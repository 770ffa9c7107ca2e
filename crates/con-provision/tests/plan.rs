//! The plans of the shipped profiles, rendered (snapshot), and what planning
//! refuses before anything is touched. Pure: no root needed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use con_layout::Layout;
use con_provision::plan::{Content, FileKind, Resource};
use con_provision::{PlanInput, Profile};
use con_test_support::workspace;

fn profile_dir(name: &str) -> PathBuf {
    workspace().join("configs").join(name)
}

fn input(dir: &Path, extra: &str) -> PlanInput {
    let profile = Profile::read(dir).unwrap();
    let text = String::from_utf8(profile.get("con.toml").unwrap().to_vec()).unwrap() + extra;
    PlanInput {
        config: con_config::parse(&text, &dir.join("con.toml"), &BTreeMap::new()).unwrap(),
        profile,
        install_profile: true,
    }
}

/// Production naming under a fixed fake root, so renderings are stable.
fn layout() -> Layout {
    Layout::new(Path::new("/ROOT"), "a-", "").unwrap()
}

fn file_text(plan: &con_provision::Plan, suffix: &str) -> String {
    plan.resources
        .iter()
        .find_map(|r| match r {
            Resource::File {
                path,
                content: Content::Bytes(b),
                ..
            } if path.ends_with(suffix) => Some(String::from_utf8(b.clone()).unwrap()),
            _ => None,
        })
        .unwrap()
}

#[test]
fn default_profile_plan() {
    let plan = con_provision::plan(&input(&profile_dir("default"), ""), &layout()).unwrap();
    insta::assert_snapshot!("default_plan", plan.render(Path::new("/ROOT")));
    insta::assert_snapshot!(
        "default_strategist_agents_md",
        file_text(&plan, "home/a-strategist/AGENTS.md")
    );
    let sudoers = plan
        .resources
        .iter()
        .find_map(|r| match r {
            Resource::Sudoers {
                text: Some(text), ..
            } => Some(text.clone()),
            _ => None,
        })
        .unwrap();
    insta::assert_snapshot!("default_sysadmin_sudoers", sudoers);
}

#[test]
fn minimal_profile_plan() {
    let plan = con_provision::plan(&input(&profile_dir("minimal"), ""), &layout()).unwrap();
    insta::assert_snapshot!("minimal_plan", plan.render(Path::new("/ROOT")));
}

#[test]
fn plan_is_in_dependency_order() {
    let plan = con_provision::plan(&input(&profile_dir("default"), ""), &layout()).unwrap();
    let phases: Vec<_> = plan.resources.iter().map(Resource::phase).collect();
    let mut sorted = phases.clone();
    sorted.sort();
    assert_eq!(phases, sorted);
    // The secrets file is planned for owner and mode only.
    assert!(plan.resources.iter().any(|r| matches!(
        r,
        Resource::File {
            kind: FileKind::Secrets,
            content: Content::Unmanaged,
            mode: 0o600,
            ..
        }
    )));
}

#[test]
fn invalid_agent_names_are_refused_by_the_config_and_by_the_plan() {
    for bad in ["../x", "a;rm", "A", "a/b"] {
        let text = format!("[[agents]]\nname = {bad:?}\ntier = \"worker\"\n");
        let err = con_config::parse(&text, Path::new("con.toml"), &BTreeMap::new()).unwrap_err();
        assert!(err.to_string().contains("name"), "{bad}: {err}");

        // Even a Config built by hand cannot get such a name past planning.
        let mut input = input(&profile_dir("minimal"), "");
        input.config.agents[0].name = bad.to_owned();
        let err = con_provision::plan(&input, &layout()).unwrap_err();
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
}

#[test]
fn only_cons_own_groups_are_allowed() {
    let mut input = input(&profile_dir("minimal"), "");
    input.config.agents[0].groups = vec!["video".into()];
    let err = con_provision::plan(&input, &layout())
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "agent concierge: groups: \"video\" is not one of con's agent groups \
         (allowed: agents, officers, operators, workers)"
    );
    input.config.agents[0].groups = vec!["trusted".into()];
    assert!(con_provision::plan(&input, &layout()).is_err());
    input.config.agents[0].groups = vec!["workers".into()];
    let plan = con_provision::plan(&input, &layout()).unwrap();
    assert!(
        plan.render(Path::new("/ROOT"))
            .contains("groups=agents,operators,workers\n")
    );
}

#[test]
fn a_sudoers_template_for_another_user_is_refused() {
    let mut input = input(&profile_dir("default"), "");
    input.profile.files.insert(
        "sudoers/sysadmin".into(),
        b"a-sysadmin ALL=(root) NOPASSWD: /bin/true x\nroot ALL=(ALL) ALL\n".to_vec(),
    );
    let err = con_provision::plan(&input, &layout())
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "agent sysadmin: sudoers/sysadmin line 2: every rule must start with the user a-sysadmin (got \"root\")"
    );
}

/// A quarantined agent's inbox loses exactly the named write grants from
/// the plan; every other resource stays as planned.
#[test]
fn a_quarantined_inbox_keeps_no_planned_write_grant() {
    use con_provision::plan::AclTag;
    let layout = layout();
    let planned = con_provision::plan(&input(&profile_dir("default"), ""), &layout).unwrap();
    let acl_of = |plan: &con_provision::Plan, agent: &str| {
        plan.resources
            .iter()
            .find_map(|r| match r {
                Resource::Acl { path, access, .. } if *path == layout.agent_inbox(agent) => {
                    Some(access.clone())
                }
                _ => None,
            })
            .unwrap()
    };
    let named_writers = |entries: &[con_provision::plan::AclEntry]| {
        entries
            .iter()
            .filter(|e| matches!(e.tag, AclTag::User(_) | AclTag::Group(_)) && e.perm & 2 != 0)
            .count()
    };
    assert!(named_writers(&acl_of(&planned, "sysadmin")) > 0);
    let mut plan = planned.clone();
    let notes = plan.withhold_quarantined_inbox_writers(&layout, &["sysadmin".to_owned()]);
    assert_eq!(notes.len(), 1);
    assert!(notes[0].change.contains("while sysadmin is quarantined"));
    assert_eq!(named_writers(&acl_of(&plan, "sysadmin")), 0);
    // Only those entries went: the owner, group, mask and other stay.
    let kept: Vec<_> = acl_of(&planned, "sysadmin")
        .into_iter()
        .filter(|e| !(matches!(e.tag, AclTag::User(_) | AclTag::Group(_)) && e.perm & 2 != 0))
        .collect();
    assert_eq!(acl_of(&plan, "sysadmin"), kept);
    assert_eq!(acl_of(&plan, "concierge"), acl_of(&planned, "concierge"));
    assert_eq!(
        plan.resources.len(),
        planned.resources.len(),
        "nothing else is left out"
    );
}
