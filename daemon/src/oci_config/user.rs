//! The container's uid, gid and supplementary groups: CRI run_as_* fields and the image's
//! `USER`, resolved through the image's /etc/passwd and /etc/group contents the way
//! containerd's `oci.WithUser` / `WithAdditionalGIDs` do.

use crate::workload::{ContainerSecurity, SupplementalGroupsPolicy};

use super::invalid;
use crate::error::Result;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// `name:passwd:uid:gid:...` lines; malformed lines and comments are skipped, like libc.
pub(crate) fn parse_passwd(s: &str) -> Vec<PasswdEntry> {
    s.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?.trim().to_string(),
                uid: f.get(2)?.trim().parse().ok()?,
                gid: f.get(3)?.trim().parse().ok()?,
            })
        })
        .collect()
}

/// `name:passwd:gid:member,member` lines.
pub(crate) fn parse_group(s: &str) -> Vec<GroupEntry> {
    s.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(GroupEntry {
                name: f.first()?.trim().to_string(),
                gid: f.get(2)?.trim().parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|m| !m.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// The resolved process identity.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Sorted, deduplicated; includes the primary gid (containerd ≥ 1.6.18).
    pub additional_gids: Vec<u32>,
}

fn id_from_i64(what: &str, v: i64) -> Result<u32> {
    u32::try_from(v).map_err(|_| invalid(format!("{what} {v} is out of range")))
}

fn parse_id(s: &str) -> Option<std::result::Result<u32, ()>> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        Some(s.parse::<u32>().map_err(|_| ()))
    } else {
        None
    }
}

/// Resolve the container identity. `passwd`/`group` are the image's file contents (None
/// when the image has no such file).
pub(crate) fn resolve(
    sc: &ContainerSecurity,
    image_user: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<Identity> {
    let users = passwd.map(parse_passwd).unwrap_or_default();
    let groups = group.map(parse_group).unwrap_or_default();
    let run_as_user = sc
        .run_as_user
        .map(|v| id_from_i64("run_as_user", v))
        .transpose()?;
    let run_as_group = sc
        .run_as_group
        .map(|v| id_from_i64("run_as_group", v))
        .transpose()?;
    let username = sc.run_as_username.as_str();

    // containerd's generateUserString, plus a check that a username and a uid agree.
    let user_part = match (username, run_as_user) {
        ("", None) => None,
        ("", Some(uid)) => Some(uid.to_string()),
        (name, None) => Some(name.to_string()),
        (name, Some(uid)) => {
            let named = match parse_id(name) {
                Some(n) => n.map_err(|_| invalid(format!("bad run_as_username {name:?}")))?,
                None => lookup_user(&users, name)?.uid,
            };
            if named != uid {
                return Err(invalid(format!(
                    "run_as_username {name:?} (uid {named}) conflicts with run_as_user {uid}"
                )));
            }
            Some(uid.to_string())
        }
    };
    let user_str = match (user_part, run_as_group) {
        (Some(u), Some(g)) => format!("{u}:{g}"),
        (Some(u), None) => u,
        (None, Some(g)) => {
            return Err(invalid(format!(
                "run_as_group {g} is specified without run_as_user or run_as_username"
            )))
        }
        (None, None) => image_user.to_string(),
    };
    let (uid, gid, name) = parse_user_string(&user_str, &users, &groups)?;

    let policy = sc.supplemental_groups_policy;
    let mut gids = vec![gid];
    if policy == SupplementalGroupsPolicy::Merge {
        let name = name.or_else(|| users.iter().find(|u| u.uid == uid).map(|u| u.name.clone()));
        if let Some(name) = name {
            gids.extend(
                groups
                    .iter()
                    .filter(|g| g.name != name && g.members.contains(&name))
                    .map(|g| g.gid),
            );
        }
    }
    for g in &sc.supplemental_groups {
        gids.push(id_from_i64("supplemental group", *g)?);
    }
    gids.sort_unstable();
    gids.dedup();
    Ok(Identity {
        uid,
        gid,
        additional_gids: gids,
    })
}

fn lookup_user<'a>(users: &'a [PasswdEntry], name: &str) -> Result<&'a PasswdEntry> {
    users.iter().find(|u| u.name == name).ok_or_else(|| {
        invalid(format!(
            "user {name:?} not found in the image's /etc/passwd"
        ))
    })
}

/// `""`, `uid`, `uid:gid`, `name`, `name:group` (and mixes) → (uid, gid, username if known).
fn parse_user_string(
    s: &str,
    users: &[PasswdEntry],
    groups: &[GroupEntry],
) -> Result<(u32, u32, Option<String>)> {
    if s.is_empty() {
        return Ok((0, 0, None));
    }
    let bad = || invalid(format!("invalid user {s:?}"));
    let (user, group) = match s.split(':').collect::<Vec<_>>().as_slice() {
        [u] => (*u, None),
        [u, g] => (*u, Some(*g)),
        _ => return Err(bad()),
    };
    if user.is_empty() || group.is_some_and(str::is_empty) {
        return Err(bad());
    }
    let (uid, mut gid, name) = match parse_id(user) {
        Some(uid) => {
            let uid = uid.map_err(|_| bad())?;
            // An unknown numeric uid is fine: gid 0, as containerd's WithUserID.
            let entry = users.iter().find(|u| u.uid == uid);
            (
                uid,
                entry.map_or(0, |u| u.gid),
                entry.map(|u| u.name.clone()),
            )
        }
        None => {
            let e = lookup_user(users, user)?;
            (e.uid, e.gid, Some(e.name.clone()))
        }
    };
    if let Some(g) = group {
        gid = match parse_id(g) {
            Some(n) => n.map_err(|_| bad())?,
            None => {
                groups
                    .iter()
                    .find(|e| e.name == g)
                    .ok_or_else(|| {
                        invalid(format!("group {g:?} not found in the image's /etc/group"))
                    })?
                    .gid
            }
        };
    }
    Ok((uid, gid, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # comment\n\
        daemon:x:1:1::/:/sbin/nologin\n\
        www:x:33:33:www:/var/www:/bin/false\n\
        app:x:1000:1000::/home/app:/bin/sh\n\
        broken line\n";
    const GROUP: &str = "root:x:0:\n\
        daemon:x:1:\n\
        www:x:33:app\n\
        wheel:x:10:root,app\n\
        audio:x:29:app, www\n\
        app:x:1000:app\n\
        staff:x:50:\n";

    fn sc(
        uid: Option<i64>,
        gid: Option<i64>,
        name: &str,
        supp: &[i64],
        strict: bool,
    ) -> ContainerSecurity {
        ContainerSecurity {
            run_as_user: uid,
            run_as_group: gid,
            run_as_username: name.into(),
            supplemental_groups: supp.to_vec(),
            supplemental_groups_policy: if strict {
                SupplementalGroupsPolicy::Strict
            } else {
                SupplementalGroupsPolicy::Merge
            },
            ..Default::default()
        }
    }

    #[test]
    fn passwd_and_group_parse() {
        let u = parse_passwd(PASSWD);
        assert_eq!(u.len(), 4);
        assert_eq!(u[3].name, "app");
        let g = parse_group(GROUP);
        assert_eq!(g[4].members, vec!["app", "www"]);
        assert!(g[0].members.is_empty());
    }

    #[test]
    fn user_resolution_table() {
        type Case<'a> = (
            &'a str,
            Option<ContainerSecurity>,
            &'a str,
            (u32, u32, &'a [u32]),
        );
        let cases: Vec<Case> = vec![
            ("nothing: root", None, "", (0, 0, &[0, 10])),
            (
                "image uid known",
                None,
                "1000",
                (1000, 1000, &[10, 29, 33, 1000]),
            ),
            ("image uid unknown", None, "4242", (4242, 0, &[0])),
            (
                "image uid:gid",
                None,
                "1000:50",
                (1000, 50, &[10, 29, 33, 50]),
            ),
            ("image name", None, "www", (33, 33, &[29, 33])),
            (
                "image name:group",
                None,
                "app:staff",
                (1000, 50, &[10, 29, 33, 50]),
            ),
            ("image name:gid", None, "www:7", (33, 7, &[7, 29])),
            ("image uid:group", None, "33:wheel", (33, 10, &[10, 29])),
            (
                "run_as_user overrides image",
                Some(sc(Some(33), None, "", &[], false)),
                "app",
                (33, 33, &[29, 33]),
            ),
            (
                "run_as_user + group",
                Some(sc(Some(1000), Some(3000), "", &[], false)),
                "",
                (1000, 3000, &[10, 29, 33, 3000]),
            ),
            (
                "run_as_username",
                Some(sc(None, None, "app", &[], false)),
                "www",
                (1000, 1000, &[10, 29, 33, 1000]),
            ),
            (
                "username and matching uid",
                Some(sc(Some(1000), None, "app", &[], false)),
                "",
                (1000, 1000, &[10, 29, 33, 1000]),
            ),
            (
                "supplemental merge",
                Some(sc(Some(1000), None, "", &[5000, 10], false)),
                "",
                (1000, 1000, &[10, 29, 33, 1000, 5000]),
            ),
            (
                "supplemental strict",
                Some(sc(Some(1000), None, "", &[5000], true)),
                "",
                (1000, 1000, &[1000, 5000]),
            ),
            (
                "strict image user",
                Some(sc(None, None, "", &[], true)),
                "app",
                (1000, 1000, &[1000]),
            ),
        ];
        for (what, sc, image, (uid, gid, extra)) in cases {
            let id = resolve(&sc.unwrap_or_default(), image, Some(PASSWD), Some(GROUP))
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(
                (id.uid, id.gid, id.additional_gids.as_slice()),
                (uid, gid, extra),
                "{what}"
            );
        }
    }

    #[test]
    fn without_passwd_numeric_users_work() {
        let id = resolve(&Default::default(), "1000:1000", None, None).unwrap();
        assert_eq!(
            (id.uid, id.gid, id.additional_gids),
            (1000, 1000, vec![1000])
        );
        let id = resolve(&Default::default(), "1000", None, None).unwrap();
        assert_eq!((id.uid, id.gid), (1000, 0));
    }

    #[test]
    fn bad_users_are_invalid_argument() {
        let cases: Vec<(&str, Option<ContainerSecurity>, &str)> = vec![
            ("unknown name", None, "nobody"),
            ("unknown group", None, "app:nogroup"),
            ("three parts", None, "1:2:3"),
            ("empty user part", None, ":5"),
            ("empty group part", None, "app:"),
            ("uid overflow", None, "99999999999"),
            (
                "negative run_as_user",
                Some(sc(Some(-1), None, "", &[], false)),
                "",
            ),
            (
                "group without user",
                Some(sc(None, Some(5), "", &[], false)),
                "app",
            ),
            (
                "username/uid conflict",
                Some(sc(Some(0), None, "app", &[], false)),
                "",
            ),
            (
                "negative supplemental",
                Some(sc(Some(0), None, "", &[-3], false)),
                "",
            ),
        ];
        for (what, sc, image) in cases {
            match resolve(&sc.unwrap_or_default(), image, Some(PASSWD), Some(GROUP)) {
                Err(crate::error::Error::InvalidArgument(_)) => {}
                other => panic!("{what}: expected InvalidArgument, got {other:?}"),
            }
        }
    }
}
