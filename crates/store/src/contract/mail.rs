//! Mail: queries, usage, changes.

use super::*;

pub fn search_plans_agree_on_every_page(new: &NewStore) {
    let s = new();
    let (account, inbox) = mail_account(&*s);
    // Enough matches for the arrival-order walk; arrival times repeat, so ties must break
    // the same way in both plans.
    for i in 0..3_500 {
        let subject = if i % 3 == 0 {
            format!("other {i}")
        } else {
            format!("budget {i}")
        };
        let e = test_email(&account, i, &subject, (i % 400) as i64);
        let text = crate::SearchText::default();
        s.insert_email(&e, std::slice::from_ref(&inbox), &[], &text)
            .unwrap();
    }
    for ascending in [false, true] {
        let q = EmailQuery {
            filter: EmailFilter::condition(EmailCondition {
                subject: Some("budget".into()),
                ..Default::default()
            }),
            sort: vec![EmailSort {
                key: SortKey::ReceivedAt,
                ascending,
            }],
            collapse_threads: false,
        };
        for position in [0, 777, 2_300] {
            let page = |count_total| QueryPage {
                position,
                limit: 50,
                count_total,
            };
            let (walked, _) = s.query_emails(&account, &q, page(false)).unwrap();
            let (driven, total) = s.query_emails(&account, &q, page(true)).unwrap();
            assert_eq!(total, Some(2_333));
            assert_eq!(walked, driven, "position {position}, ascending {ascending}");
            assert_eq!(walked.len(), if position == 2_300 { 33 } else { 50 });
        }
    }
}

pub fn usage_follows_inserts_and_destroys(new: &NewStore) {
    let s = new();
    let (account, inbox) = mail_account(&*s);
    for i in 0..3 {
        let e = test_email(&account, i, "x", 1);
        s.insert_email(&e, std::slice::from_ref(&inbox), &[], &Default::default())
            .unwrap();
    }
    assert_eq!(s.mail_usage(&account).unwrap(), 10 + 11 + 12);
    s.destroy_email(&account, &EmailId::new("e1").unwrap())
        .unwrap();
    assert_eq!(s.mail_usage(&account).unwrap(), 10 + 12);
    s.destroy_email(&account, &EmailId::new("e1").unwrap()).ok();
    assert_eq!(
        s.mail_usage(&account).unwrap(),
        10 + 12,
        "a second destroy frees nothing"
    );
}

pub fn email_changes_are_exact_across_concurrent_writers(new: &NewStore) {
    let s = new();
    let (account, inbox) = mail_account(&*s);
    let owner = account.clone();
    let email = move |i: usize| test_email(&owner, i, "", i as i64);
    for i in 0..20 {
        s.insert_email(
            &email(i),
            std::slice::from_ref(&inbox),
            &[],
            &Default::default(),
        )
        .unwrap();
    }
    let base = s.mail_modseq(&account).unwrap();
    // Four writers at once: new mail, keyword updates, destroys.
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (s, inbox, email) = (s.clone(), inbox.clone(), email.clone());
            let account = account.clone();
            std::thread::spawn(move || {
                for i in 0..5 {
                    let n = t * 5 + i;
                    match t {
                        0 => {
                            s.insert_email(
                                &email(100 + n),
                                std::slice::from_ref(&inbox),
                                &[],
                                &Default::default(),
                            )
                            .unwrap();
                        }
                        1 | 2 => {
                            s.update_email(
                                &account,
                                &EmailId::new(format!("e{n}")).unwrap(),
                                Some(&["$seen".into()]),
                                None,
                            )
                            .unwrap();
                        }
                        _ => {
                            s.destroy_email(&account, &EmailId::new(format!("e{n}")).unwrap())
                                .unwrap();
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let c = s.email_changes(&account, base, 1000).unwrap().unwrap();
    assert!(!c.has_more);
    assert_eq!(c.created.len(), 5);
    assert_eq!(c.updated.len(), 10);
    assert_eq!(c.destroyed.len(), 5);
    assert_eq!(c.new_modseq, s.mail_modseq(&account).unwrap());
    // Paging through the same window in small steps sees every change exactly once.
    let (mut since, mut seen) = (base, Vec::new());
    loop {
        let page = s.email_changes(&account, since, 3).unwrap().unwrap();
        seen.extend(
            page.created
                .iter()
                .chain(&page.updated)
                .chain(&page.destroyed)
                .cloned(),
        );
        since = page.new_modseq;
        if !page.has_more {
            break;
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 20);
    assert!(
        s.email_changes(&account, c.new_modseq + 1, 10)
            .unwrap()
            .is_none(),
        "a future state"
    );
}
