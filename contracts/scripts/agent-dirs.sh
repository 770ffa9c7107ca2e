#!/bin/sh
# Checks each configured agent's directories against what con bootstrap
# sets. Prints one line per problem; exit 1 if there is any.
problems=0
say() { echo "$*"; problems=$((problems + 1)); }

# check PATH UID WHAT: PATH is a directory owned by UID, closed to others.
check() {
    path=$1 want_uid=$2 what=$3
    if [ ! -d "$path" ]; then
        say "$path: missing ($what)"
        return
    fi
    # Names of their own: the caller's variables must survive.
    set -- $(stat -c '%u %a' "$path")
    got_uid=$1 mode=$2
    [ "$got_uid" = "$want_uid" ] || say "$path: owned by uid $got_uid, want $want_uid ($what)"
    # Others get nothing in an agent's tree; only the skills are world-readable.
    other=$((0$mode % 8))
    case $what in
        skills) [ $((other & 2)) -eq 0 ] || say "$path: mode $mode, others may write" ;;
        *) [ "$other" -eq 0 ] || say "$path: mode $mode, others have access" ;;
    esac
}

for a in $CON_AGENTS; do
    user="$CON_USER_PREFIX$a"
    agent_uid=$(id -u "$user" 2>/dev/null) || { say "$a: no user $user"; continue; }
    base="$CON_AGENTS_DIR/$a"
    check "$base" 0 "base dir, root's"
    # Group write on the base would let the agent rename its own tree.
    if [ -d "$base" ]; then
        g=$(( (0$(stat -c '%a' "$base") / 8) % 8 ))
        [ $((g & 2)) -eq 0 ] || say "$base: group may write"
    fi
    check "$CON_HOME_BASE/$user" 0 "home, root's"
    check "$base/workspace" 0 "workspace, root's"
    check "$base/workspace/skills" 0 skills
    for sub in inbox outbox processed failed; do
        check "$base/$sub" "$agent_uid" "$sub, the agent's"
    done
done
[ "$problems" -eq 0 ] || exit 1
