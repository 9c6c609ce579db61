//! The input contract (EVENTS.md) against the decoder: every rule, reason and precedence.

use quotaflow::event::Event;

use crate::common::EventType::{self, *};
use crate::common::{decode, DecodeLimits, Decoder, Reason, FAR_FUTURE};

const DEAL: &str = r#"{"deal_id":"deal-00017","version":3,"occurred_at":"2026-10-05T16:03:00+02:00","rep_id":"rep-0042",
  "account_id":"acct-1","stage":"negotiation","amount":"48000.00","currency":"EUR","close_date":"2026-11-30",
  "created_at":"2026-09-01T09:00:00Z"}"#;

fn with(base: &str, key: &str, value: serde_json::Value) -> String {
    let mut v: serde_json::Value = serde_json::from_str(base).unwrap();
    if value.is_null() && key.starts_with('-') {
        v.as_object_mut().unwrap().remove(&key[1..]);
    } else {
        v[key] = value;
    }
    v.to_string()
}

fn reason(t: EventType, json: &str) -> Option<Reason> {
    decode(t, json).err().map(|e| e.reason)
}

#[test]
fn the_examples_of_the_contract_decode() {
    let Event::Deal(d) = decode(Deal, DEAL).unwrap() else {
        panic!()
    };
    assert_eq!(d.amount.to_string(), "48000.00");
    // 16:03 at +02:00 is 14:03 UTC.
    let utc = chrono::DateTime::parse_from_rfc3339("2026-10-05T14:03:00Z")
        .unwrap()
        .timestamp_micros();
    assert_eq!(d.occurred_at, utc);
    assert_eq!(d.forecast_category, None);
    let ok = [
        (
            Activity,
            r#"{"event_id":"e1","occurred_at":"2026-10-05T14:03:00Z","rep_id":"r","activity_type":"call","duration_s":0,"outcome":"connected","extra":[1,2]}"#,
        ),
        (
            Quota,
            r#"{"rep_id":"r","period_start":"2026-10-01","period_end":"2026-12-31","amount":"250000.00","currency":"USD","version":1,"occurred_at":"2026-10-01T00:00:00Z"}"#,
        ),
        (
            Rep,
            r#"{"rep_id":"r","version":1,"occurred_at":"2026-10-01T00:00:00Z","name":"","team_id":"t","region":"","active":false,"manager_id":null}"#,
        ),
        (
            Survey,
            r#"{"response_id":"s","occurred_at":"2026-10-01T00:00:00Z","rep_id":"r","survey":"pulse-2026-q4","score":10}"#,
        ),
        (
            FxRate,
            r#"{"currency":"JPY","effective_date":"2026-10-01","rate_to_corporate":"0.0067","version":1,"occurred_at":"2026-10-01T00:00:00Z"}"#,
        ),
    ];
    for (t, json) in ok {
        decode(t, json).unwrap_or_else(|e| panic!("{t:?} {json}: {e:?}"));
    }
}

#[test]
fn each_rule_gives_its_reason() {
    use serde_json::json;
    let cases: Vec<(String, Option<Reason>)> = vec![
        (
            with(DEAL, "amount", json!(48000.0)),
            Some(Reason::WrongType),
        ),
        (with(DEAL, "amount", json!(48000)), Some(Reason::WrongType)),
        (
            with(DEAL, "amount", json!("4.8e4")),
            Some(Reason::WrongType),
        ),
        (
            with(DEAL, "amount", json!("+1.00")),
            Some(Reason::WrongType),
        ),
        (
            with(DEAL, "amount", json!("1 000.00")),
            Some(Reason::WrongType),
        ),
        (
            with(DEAL, "amount", json!("-1.00")),
            Some(Reason::NegativeAmount),
        ),
        (with(DEAL, "amount", json!("-0.00")), None),
        (
            with(DEAL, "amount", json!("12345678901234567.00")),
            Some(Reason::OutOfRange),
        ),
        (
            with(
                DEAL,
                "amount",
                json!("1234567890123456789012345678901234567890"),
            ),
            Some(Reason::OutOfRange),
        ),
        (with(DEAL, "amount", json!("1.005")), None),
        (with(DEAL, "version", json!(0)), Some(Reason::OutOfRange)),
        (with(DEAL, "version", json!("3")), Some(Reason::WrongType)),
        (with(DEAL, "version", json!(3.5)), Some(Reason::WrongType)),
        (with(DEAL, "stage", json!("won")), Some(Reason::UnknownEnum)),
        (
            with(DEAL, "currency", json!("eur")),
            Some(Reason::BadCurrency),
        ),
        (
            with(DEAL, "currency", json!("EURO")),
            Some(Reason::BadCurrency),
        ),
        (with(DEAL, "currency", json!(978)), Some(Reason::WrongType)),
        (with(DEAL, "deal_id", json!("")), Some(Reason::EmptyId)),
        (with(DEAL, "account_id", json!("")), Some(Reason::EmptyId)),
        (with(DEAL, "account_id", json!(null)), None),
        (
            with(DEAL, "-stage", json!(null)),
            Some(Reason::MissingField),
        ),
        (with(DEAL, "stage", json!(null)), Some(Reason::MissingField)),
        (
            with(DEAL, "close_date", json!("2026-02-30")),
            Some(Reason::WrongType),
        ),
        (
            with(DEAL, "close_date", json!("2026/11/30")),
            Some(Reason::WrongType),
        ),
        (
            with(DEAL, "occurred_at", json!("2026-10-05T14:03:00")),
            Some(Reason::WrongType),
        ),
        (
            with(DEAL, "occurred_at", json!("9999-01-01T00:00:00Z")),
            Some(Reason::OutOfRange),
        ),
        (
            with(DEAL, "probability", json!(1.5)),
            Some(Reason::OutOfRange),
        ),
        (
            with(DEAL, "probability", json!("0.5")),
            Some(Reason::WrongType),
        ),
        (
            with(DEAL, "forecast_category", json!("maybe")),
            Some(Reason::UnknownEnum),
        ),
    ];
    for (json, want) in cases {
        assert_eq!(reason(Deal, &json), want, "{json}");
    }
    let act = r#"{"event_id":"e1","occurred_at":"2026-10-05T14:03:00Z","rep_id":"r","activity_type":"call"}"#;
    assert_eq!(
        reason(Activity, &with(act, "duration_s", json!(-1))),
        Some(Reason::OutOfRange)
    );
    assert_eq!(
        reason(Activity, &with(act, "outcome", json!("replied"))),
        None,
        "outcomes are checked against the union"
    );
    assert_eq!(
        reason(Activity, &with(act, "outcome", json!("great"))),
        Some(Reason::UnknownEnum)
    );
    assert_eq!(
        reason(Activity, &with(act, "activity_type", json!("lunch"))),
        Some(Reason::UnknownEnum)
    );
    let survey = r#"{"response_id":"s","occurred_at":"2026-10-01T00:00:00Z","rep_id":"r","survey":"p","score":11}"#;
    assert_eq!(reason(Survey, survey), Some(Reason::OutOfRange));
    let quota = r#"{"rep_id":"r","period_start":"2026-10-01","period_end":"2026-09-30","amount":"1.00","currency":"USD","version":1,"occurred_at":"2026-10-01T00:00:00Z"}"#;
    assert_eq!(
        reason(Quota, quota),
        Some(Reason::OutOfRange),
        "period_end before period_start"
    );
    let fx = r#"{"currency":"EUR","effective_date":"2026-10-01","rate_to_corporate":-1,"version":1,"occurred_at":"2026-10-01T00:00:00Z"}"#;
    assert_eq!(
        reason(FxRate, fx),
        Some(Reason::WrongType),
        "a rate given as a JSON number"
    );
    let fx = fx.replace(":-1,", ":\"-1.1\",");
    assert_eq!(reason(FxRate, &fx), Some(Reason::NegativeAmount));
}

#[test]
fn message_level_reasons_come_first() {
    assert_eq!(reason(Deal, ""), Some(Reason::InvalidJson));
    assert_eq!(
        reason(Deal, "{\"deal_id\": NaN}"),
        Some(Reason::InvalidJson)
    );
    assert_eq!(reason(Deal, "{\"a\": Infinity}"), Some(Reason::InvalidJson));
    assert_eq!(reason(Deal, &DEAL[..40]), Some(Reason::InvalidJson));
    assert_eq!(decoder_err(Deal, &[0xff, 0xfe, b'{']), Reason::InvalidJson);
    assert_eq!(reason(Deal, "[1,2]"), Some(Reason::WrongType));
    assert_eq!(reason(Deal, "\"deal\""), Some(Reason::WrongType));
    // Deep nesting is valid JSON, skipped without recursion: not an object, or a field of the
    // wrong type; and never a stack overflow.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(reason(Deal, &deep), Some(Reason::WrongType));
    // 10 MB against the default 1 MiB limit: too_large before any parsing.
    let huge = format!("{{\"deal_id\": \"{}\"}}", "x".repeat(10 << 20));
    assert_eq!(reason(Deal, &huge), Some(Reason::TooLarge));
    let nested = DEAL.replacen(
        "\"deal_id\":\"deal-00017\"",
        &format!("\"deal_id\":{deep}"),
        1,
    );
    assert_ne!(nested, DEAL);
    assert_eq!(reason(Deal, &nested), Some(Reason::WrongType));
    let small = Decoder::new(DecodeLimits {
        max_message_bytes: 100,
        max_clock_skew_micros: 0,
    })
    .unwrap();
    let err = small
        .decode(Deal, "x".repeat(101).as_bytes(), FAR_FUTURE)
        .unwrap_err();
    assert_eq!(err.reason, Reason::TooLarge);
}

#[test]
fn effective_from_is_an_optional_date_checked_last() {
    use serde_json::json;
    const REP: &str = r#"{"rep_id":"r","version":2,"occurred_at":"2026-10-05T09:00:00Z","name":"n","team_id":"t","region":"NA","active":true}"#;
    let from = |json: &str| match decode(Rep, json).unwrap() {
        Event::Rep(r) => r.effective_from,
        other => panic!("{other:?}"),
    };
    // Absent or null: the state takes the day of occurred_at (state::hierarchy).
    assert_eq!(from(REP), None);
    assert_eq!(from(&with(REP, "effective_from", json!(null))), None);
    let back_dated = from(&with(REP, "effective_from", json!("2026-09-28"))).unwrap();
    assert_eq!(
        quotaflow::calendar::date_of(back_dated).to_string(),
        "2026-09-28"
    );
    // Like every date: a day that does not exist, another format, a number.
    for bad in [json!("2026-02-30"), json!("28.09.2026"), json!(20260928)] {
        let j = with(REP, "effective_from", bad.clone());
        assert_eq!(reason(Rep, &j), Some(Reason::WrongType), "{bad}");
    }
    // It is the last field of the table: any other faulty field wins.
    let j = with(
        &with(REP, "effective_from", json!("x")),
        "team_id",
        json!(""),
    );
    assert_eq!(reason(Rep, &j), Some(Reason::EmptyId));
    let err = decode(Rep, &with(REP, "effective_from", json!("2026-02-30"))).unwrap_err();
    assert!(err.detail.contains("`effective_from`"), "{}", err.detail);
}

fn decoder_err(t: EventType, bytes: &[u8]) -> Reason {
    crate::common::decoder()
        .decode(t, bytes, FAR_FUTURE)
        .unwrap_err()
        .reason
}

#[test]
fn precedence_missing_then_fields_in_table_order() {
    use serde_json::json;
    // A missing required field wins over an earlier faulty field.
    let j = with(&with(DEAL, "deal_id", json!("")), "-currency", json!(null));
    assert_eq!(reason(Deal, &j), Some(Reason::MissingField));
    // Of two faulty fields, the first in the table wins: version (2nd) before stage (6th).
    let j = with(&with(DEAL, "stage", json!("x")), "version", json!(0));
    assert_eq!(reason(Deal, &j), Some(Reason::OutOfRange));
    // rep_id (4th) before amount (7th).
    let j = with(&with(DEAL, "amount", json!("-5")), "rep_id", json!(""));
    assert_eq!(reason(Deal, &j), Some(Reason::EmptyId));
    // Within a field, the first problem: wrong_type before anything else.
    assert_eq!(
        reason(Deal, &with(DEAL, "currency", json!(""))),
        Some(Reason::BadCurrency)
    );
}

#[test]
fn every_reason_has_a_detail_naming_the_field() {
    let err = decode(Deal, &with(DEAL, "currency", serde_json::json!("eur"))).unwrap_err();
    assert!(err.detail.contains("`currency`"), "{}", err.detail);
}

#[test]
fn schemas_list_the_fields_of_the_contract_in_order() {
    let names = |t| {
        crate::common::Schema::builtin(t)
            .unwrap()
            .fields
            .iter()
            .map(|f| f.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(Deal),
        [
            "deal_id",
            "version",
            "occurred_at",
            "rep_id",
            "account_id",
            "stage",
            "amount",
            "currency",
            "close_date",
            "forecast_category",
            "probability",
            "created_at"
        ]
    );
    assert_eq!(
        names(Rep),
        [
            "rep_id",
            "version",
            "occurred_at",
            "name",
            "team_id",
            "region",
            "manager_id",
            "role",
            "hired_on",
            "active",
            "effective_from"
        ]
    );
    assert_eq!(
        names(FxRate),
        [
            "currency",
            "effective_date",
            "rate_to_corporate",
            "version",
            "occurred_at"
        ]
    );
    assert_eq!(
        names(Activity),
        [
            "event_id",
            "occurred_at",
            "rep_id",
            "activity_type",
            "duration_s",
            "outcome",
            "deal_id",
            "account_id"
        ]
    );
}

mod never_panics {
    //! The decoder's fuzz target, as a property test: any bytes, and valid messages of every
    //! type cut, spliced and byte-flipped, give an event or a dead-letter reason, never a panic.
    use crate::common::EventType;
    use proptest::prelude::*;

    use crate::common::{decoder, FAR_FUTURE};

    fn valid(t: EventType) -> String {
        let mut out = None;
        let spec = quotaflow::generate::GenSpec {
            reps: 2,
            days: 3,
            seed: 1,
            start: chrono::NaiveDate::from_ymd_opt(2026, 3, 2).unwrap(),
            silence: None,
        };
        quotaflow::generate::generate(&spec, |g| {
            if g.event_type == t && out.is_none() {
                out = Some(g.value);
            }
        });
        out.unwrap_or_else(|| "{}".into())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes(t in 0usize..6, bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decoder().decode(EventType::ALL[t], &bytes, FAR_FUTURE);
        }

        #[test]
        fn mutated_messages(
            t in 0usize..6,
            cut in 0usize..400,
            at in 0usize..400,
            insert in "[\\[\\]{}\":,0-9eE+.\\-a-z\\\\ ]{0,12}",
            flip in any::<u8>(),
        ) {
            let t = EventType::ALL[t];
            let mut bytes = valid(t).into_bytes();
            let at = at % (bytes.len() + 1);
            bytes.splice(at..at, insert.bytes());
            let i = cut % (bytes.len() + 1);
            if let Some(b) = bytes.get_mut(i) {
                *b ^= flip;
            }
            if cut % 3 == 0 {
                bytes.truncate(cut % (bytes.len() + 1));
            }
            match decoder().decode(t, &bytes, FAR_FUTURE) {
                Ok(_) => {}
                Err(bad) => prop_assert!(!bad.detail.is_empty()),
            }
        }
    }
}
