//! Alerts: de-duplication windows, the mail cap, delivery cursors and retries, detector batches.

use super::*;

/// A repeat counts on the open alert while it keeps coming (within the window of its last
/// sighting), merging its lists bounded; after a quiet window, or once resolved, it is new.
pub fn alert_repeats_count_within_the_window_and_merge_their_lists(new: &NewStore) {
    let s = new();
    let (id, new) = s
        .raise_alert(&new_alert(Some("contoso"), "ip", 100, &["a"]), 60)
        .unwrap();
    assert!(new);
    for n in 0..30 {
        let kid = format!("k{n}");
        let (again, new) = s
            .raise_alert(&new_alert(Some("contoso"), "ip", 100 + n, &[&kid, "a"]), 60)
            .unwrap();
        assert_eq!((again, new), (id, false));
    }
    let a = s.get_alert(id).unwrap().unwrap();
    assert_eq!((a.count, a.first_seen, a.last_seen), (31, 100, 129));
    let kids = a.details["kids"].as_array().unwrap();
    assert_eq!(kids.len(), ALERT_DETAIL_VALUES);
    assert_eq!(
        (&kids[0], &kids[1]),
        (&serde_json::json!("a"), &serde_json::json!("k0"))
    );
    assert_eq!(a.details["iss"], "first 100", "the first sighting's");
    // Another realm or key is another alert; so is the same after a quiet window.
    assert!(
        s.raise_alert(&new_alert(None, "ip", 130, &[]), 60)
            .unwrap()
            .1
    );
    assert!(
        s.raise_alert(&new_alert(Some("contoso"), "ip2", 130, &[]), 60)
            .unwrap()
            .1
    );
    assert!(
        s.raise_alert(&new_alert(Some("contoso"), "ip", 190, &[]), 60)
            .unwrap()
            .1
    );
}

pub fn alert_mail_is_claimed_under_a_cap_and_held_alerts_summarized_once(new: &NewStore) {
    let s = new();
    let ids: Vec<i64> = (0..5)
        .map(|n| {
            s.raise_alert(&new_alert(Some("contoso"), &format!("{n}"), 10, &[]), 0)
                .unwrap()
                .0
        })
        .collect();
    let other = s.raise_alert(&new_alert(None, "x", 10, &[]), 0).unwrap().0;
    let mailed: Vec<bool> = ids
        .iter()
        .map(|id| s.claim_alert_mail(*id, 0, 2, 10).unwrap())
        .collect();
    assert_eq!(mailed, [true, true, false, false, false]);
    assert!(
        s.claim_alert_mail(other, 0, 2, 10).unwrap(),
        "the provider's own cap"
    );
    // A new hour: counted from its start.
    let late = s
        .raise_alert(&new_alert(Some("contoso"), "late", 3_700, &[]), 0)
        .unwrap()
        .0;
    assert!(s.claim_alert_mail(late, 3_600, 2, 3_700).unwrap());
    assert!(
        s.held_alerts(10, 100).unwrap().is_empty(),
        "held before 10: none"
    );
    let held: Vec<i64> = s
        .held_alerts(3_600, 100)
        .unwrap()
        .iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(held, ids[2..]);
    s.set_alerts_summarized(&held).unwrap();
    assert!(s.held_alerts(i64::MAX, 100).unwrap().is_empty());
    assert!(s.claim_alert_mail(999, 0, 2, 10).is_err(), "no such alert");
}

pub fn deferred_alert_deliveries_are_queued_behind_the_cursor(new: &NewStore) {
    let s = new();
    let ids: Vec<i64> = (0..4)
        .map(|n| {
            s.raise_alert(&new_alert(None, &format!("{n}"), 10, &[]), 0)
                .unwrap()
                .0
        })
        .collect();
    assert_eq!(
        s.alerts_after(ids[0], 2)
            .unwrap()
            .iter()
            .map(|a| a.id)
            .collect::<Vec<_>>(),
        ids[1..3]
    );
    s.defer_alert_delivery("webhook", ids[2], 100, "HTTP 422")
        .unwrap();
    assert_eq!(s.cursor("webhook").unwrap(), ids[2], "moved past it");
    s.set_cursor("webhook", ids[3]).unwrap();
    s.defer_alert_delivery("webhook", ids[1], 50, "HTTP 413")
        .unwrap();
    assert_eq!(s.cursor("webhook").unwrap(), ids[3], "never moved back");
    assert!(s.due_alert_retries("webhook", 49, 10).unwrap().is_empty());
    let due = |now| -> Vec<(i64, u32)> {
        s.due_alert_retries("webhook", now, 10)
            .unwrap()
            .into_iter()
            .map(|(a, n)| (a.id, n))
            .collect()
    };
    assert_eq!(due(100), [(ids[1], 1), (ids[2], 1)]);
    s.defer_alert_delivery("webhook", ids[2], 200, "HTTP 422")
        .unwrap();
    assert_eq!(due(100), [(ids[1], 1)]);
    assert_eq!(due(200), [(ids[1], 1), (ids[2], 2)]);
    assert!(
        s.due_alert_retries("syslog", 200, 10).unwrap().is_empty(),
        "per consumer"
    );
    s.alert_retry_done("webhook", ids[1]).unwrap();
    assert_eq!(due(200), [(ids[2], 2)]);
}

/// A detector's pass is written with its cursor move, and only if no other detector moved
/// the cursor since the pass read it: a batch is counted once, whoever runs it.
pub fn a_batch_of_alerts_is_raised_once_with_its_cursor(new: &NewStore) {
    let s = new();
    let batch = [
        new_alert(Some("contoso"), "ip", 10, &["a"]),
        new_alert(Some("contoso"), "ip2", 10, &[]),
    ];
    let raised = s
        .raise_alerts(&batch, 60, "detector", 0, 7)
        .unwrap()
        .unwrap();
    assert_eq!(
        raised.iter().map(|(_, new)| *new).collect::<Vec<_>>(),
        [true, true]
    );
    assert_eq!(s.cursor("detector").unwrap(), 7);
    // The same batch, by a second detector that read the cursor before the first moved it.
    assert_eq!(s.raise_alerts(&batch, 60, "detector", 0, 7).unwrap(), None);
    let a = s.get_alert(raised[0].0).unwrap().unwrap();
    assert_eq!(
        (a.count, s.cursor("detector").unwrap()),
        (1, 7),
        "nothing written"
    );
    let again = s
        .raise_alerts(&batch[..1], 60, "detector", 7, 9)
        .unwrap()
        .unwrap();
    assert_eq!(again, [(raised[0].0, false)]);
    assert_eq!(s.get_alert(raised[0].0).unwrap().unwrap().count, 2);
}
