//! Unit and property tests for the query module.

use super::*;
use serde_json::json;

fn doc() -> Value {
    json!({
        "_id": "d1",
        "name": "Ada Lovelace",
        "age": 36,
        "height": 1.65,
        "active": true,
        "retired": false,
        "nick": null,
        "tags": ["math", "poetry", 7],
        "addr": {"city": "London", "zip code": "N1", "geo": [51.5, -0.1]},
        "matrix": [[1, 2], [3, 4]],
        "weird": {"a.b": 1, "": 2, "in": 3, "`tick`": 4, "0": 5},
        "big": 9007199254740993u64,
        "neg": -12,
        "emoji": "😀",
        "nums": [1, 2.5, 3],
    })
}

fn eval_with(src: &str, params: &Params) -> bool {
    Filter::parse(src)
        .unwrap_or_else(|e| panic!("parse {src:?}: {e}"))
        .matches(&doc(), params)
        .unwrap_or_else(|e| panic!("eval {src:?}: {e}"))
}

fn t(src: &str) -> bool {
    eval_with(src, &Params::new())
}

fn err(src: &str) -> QueryError {
    match Filter::parse(src) {
        Ok(f) => panic!("{src:?} parsed unexpectedly: {f:?}"),
        Err(e) => e,
    }
}

/// Asserts a syntax error at `pos`.
fn syntax_at(src: &str, pos: usize) {
    match err(src) {
        QueryError::Syntax { position, message } => {
            assert_eq!(position, pos, "{src:?}: {message}");
            assert!(!message.is_empty());
        }
        other => panic!("{src:?}: expected Syntax at {pos}, got {other:?}"),
    }
}

fn path_err_at(src: &str, pos: usize) {
    match Path::parse(src).map_err(QueryError::from) {
        Err(QueryError::InvalidPath { position, message }) => {
            assert_eq!(position, pos, "{src:?}: {message}")
        }
        other => panic!("{src:?}: expected InvalidPath at {pos}, got {other:?}"),
    }
}

// ---------------------------------------------------------------- operators

#[test]
fn equality_operators() {
    assert!(t("name == 'Ada Lovelace'"));
    assert!(!t("name == 'Ada'"));
    assert!(t("name != 'Ada'"));
    assert!(!t("age != 36"));
    assert!(t("active == true"));
    assert!(t("retired == false"));
    assert!(t("nick == null"));
    assert!(t("36 == age"));
    assert!(t("tags == ['math', 'poetry', 7]"));
    assert!(t("tags != ['math', 'poetry']"));
    assert!(t("matrix == [[1, 2], [3, 4.0]]"));
}

#[test]
fn different_types_are_never_equal() {
    assert!(!t("age == '36'"));
    assert!(!t("retired == 0"));
    assert!(!t("nick == false"));
    assert!(t("nick != false"));
    assert!(!t("'' == null"));
}

#[test]
fn ordering_operators() {
    assert!(t("age > 30"));
    assert!(!t("age > 36"));
    assert!(t("age >= 36"));
    assert!(t("age < 36.5"));
    assert!(t("age <= 36"));
    assert!(!t("age < 36"));
    assert!(t("height < 2 && height > 1.6"));
    assert!(t("neg < -11.5"));
    assert!(t("name > 'Ad' && name < 'Ada M'"));
    assert!(t("'B' > 'A' && 'a' > 'Z' && 'é' > 'z'"));
    assert!(t("emoji > 'z'"));
}

#[test]
fn ordering_between_other_types_is_false() {
    for src in [
        "age < '40'",
        "age > '1'",
        "active > false",
        "active >= true",
        "nick <= null",
        "tags < [9]",
        "addr > 1",
        "missing < 1",
        "missing >= 1",
        "1 > missing",
        "missing <= missing",
        "null < 1",
    ] {
        assert!(!t(src), "{src}");
    }
    assert!(t("!(age < '40') && !(age >= '40')"));
}

#[test]
fn numeric_int_float_equality() {
    assert!(t("1 == 1.0"));
    assert!(t("age == 36.0"));
    assert!(t("age == 3.6e1"));
    assert!(t("0 == -0.0"));
    assert!(t("-0 == 0"));
    assert!(t("nums == [1.0, 2.5, 3e0]"));
    assert!(t("1e2 == 100"));
    assert!(!t("1 == 1.0000001"));
    // 2^53 + 1 must not be equal to its nearest f64.
    assert!(t("big == 9007199254740993"));
    assert!(!t("big == 9007199254740992.0"));
    assert!(t("big > 9007199254740992.0"));
    assert!(t("18446744073709551615 > 18446744073709551614"));
    assert!(t("18446744073709551615 < 18446744073709551616"));
    assert!(t("-9223372036854775808 < -9223372036854775807"));
    assert!(t("2.5 > 2 && 2.5 < 3 && -2.5 < -2 && -2.5 > -3"));
}

#[test]
fn logical_operators() {
    assert!(t("active && age == 36"));
    assert!(!t("active && retired"));
    assert!(t("retired || active"));
    assert!(!t("retired || nick == 1"));
    assert!(t("!retired"));
    assert!(!t("!active"));
    assert!(t("!!active"));
    assert!(t("active and not retired"));
    assert!(t("retired or active"));
    assert!(t("true"));
    assert!(!t("false"));
    assert!(!t("null"));
}

#[test]
fn truthiness_only_json_true() {
    for src in ["age", "name", "tags", "addr", "nick", "missing", "1", "'true'", "[true]", "$p"] {
        let mut p = Params::new();
        p.insert("p".into(), json!(1));
        assert!(!eval_with(src, &p), "{src}");
        assert!(eval_with(&format!("!{src}"), &p), "!{src}");
    }
    let mut p = Params::new();
    p.insert("flag".into(), json!(true));
    assert!(eval_with("$flag", &p));
    assert!(t("(age == 36) == true"));
    assert!(t("(age == 1) == false"));
    // `!` binds tighter than `==`: (!active) == false.
    assert!(t("!active == false"));
    assert!(t("not active == false"));
}

#[test]
fn short_circuit() {
    // The right side would be false/true either way; check that evaluation of
    // deep structures on the right does not change a short-circuited result.
    assert!(t("active || missing.x.y == 1"));
    assert!(!t("retired && missing == null"));
}

#[test]
fn precedence() {
    // && binds tighter than ||.
    assert!(t("true || false && false"));
    assert!(!t("(true || false) && false"));
    assert!(t("false && false || true"));
    assert!(t("false and false or true"));
    // comparisons bind tighter than &&.
    assert!(t("age == 36 && name contains 'Ada' || false"));
    assert!(t("'x' in ['x'] && 'math' in tags"));
    // ! binds tighter than &&/||.
    assert!(t("!retired && active"));
    assert!(!t("!(retired || active)"));
    assert!(t("!retired || retired"));
    // parentheses
    assert!(t("((age == 36))"));
    assert!(t("( ( true ) )"));
    let f = Filter::parse("a || b && c").unwrap();
    assert!(matches!(&f.expr, parser::Expr::Or(items) if items.len() == 2));
    let f = Filter::parse("a && b && c && d").unwrap();
    assert!(matches!(&f.expr, parser::Expr::And(items) if items.len() == 4));
}

#[test]
fn contains_operator() {
    assert!(t("name contains 'Love'"));
    assert!(!t("name contains 'love'"));
    assert!(t("name contains ''"));
    assert!(t("tags contains 'poetry'"));
    assert!(t("tags contains 7.0"));
    assert!(!t("tags contains 'po'"));
    assert!(t("matrix contains [3, 4]"));
    assert!(!t("age contains 3"));
    assert!(!t("name contains 1"));
    assert!(!t("missing contains 'x'"));
    assert!(!t("addr contains 'city'"));
    assert!(t("[1, null] contains missing"));
    assert!(t("[1, null] contains nick"));
}

#[test]
fn in_operator() {
    // literal arrays
    assert!(t("age in [1, 36, 'x']"));
    assert!(t("age in [36.0]"));
    assert!(!t("age in []"));
    assert!(!t("age in ['36']"));
    assert!(t("[1, 2] in [[1, 2], [3]]"));
    // field arrays
    assert!(t("'math' in tags"));
    assert!(t("7 in tags"));
    assert!(!t("'x' in tags"));
    assert!(t("addr.city in ['Paris', 'London']"));
    // non-array right side
    assert!(!t("'Ada' in name"));
    assert!(!t("1 in missing"));
    // missing left side behaves like null
    assert!(t("missing in [null]"));
    assert!(!t("missing in [1]"));
    // parameter arrays
    let mut p = Params::new();
    p.insert("ids".into(), json!(["d0", "d1"]));
    p.insert("one".into(), json!("d1"));
    p.insert("n".into(), json!(36));
    assert!(eval_with("_id in $ids", &p));
    assert!(eval_with("_id in [$one, 'zz']", &p));
    assert!(eval_with("age in [$n]", &p));
    assert!(!eval_with("name in $one", &p));
    assert!(eval_with("[[$n]] contains [36]", &p));
}

#[test]
fn exists_operator() {
    assert!(t("exists(name)"));
    assert!(t("exists(nick)"));
    assert!(t("exists( addr.geo[1] )"));
    assert!(!t("exists(addr.geo[2])"));
    assert!(!t("exists(missing)"));
    assert!(!t("exists(name.first)"));
    assert!(t("!exists(missing) && exists(_id)"));
    assert!(t("exists(weird.`a.b`)"));
}

#[test]
fn missing_field_semantics() {
    assert!(t("missing == null"));
    assert!(t("null == missing"));
    assert!(t("missing != 1"));
    assert!(!t("missing != null"));
    assert!(!t("missing == 1"));
    assert!(t("missing == other_missing"));
    assert!(t("addr.nothing == null && tags[10] == null && name.x == null"));
    assert!(!t("missing"));
    assert!(t("!missing"));
}

// ----------------------------------------------------------------- literals

#[test]
fn literal_forms() {
    assert!(t("42 == 42"));
    assert!(t("-7 == -7.0"));
    assert!(t("0.5 == 5e-1"));
    assert!(t("6.02E23 == 602000000000000000000000"));
    assert!(t("1E+2 == 100"));
    assert!(t("-1.5e-3 == -0.0015"));
    assert!(t("\"dq\" == 'dq'"));
    assert!(t("true == true && false == false && null == null"));
    assert!(t("[] == []"));
    assert!(t("[1, \"a\", true, null, [2]] == [1, 'a', true, null, [2.0]]"));
    assert!(t("[ 1 ,2 ] == [1,2]"));
    assert!(t("age==36&&name!='x'"));
    assert!(t("age\n==\t36\r\n"));
}

#[test]
fn string_escapes() {
    let lit = |src: &str| -> Value {
        match Filter::parse(src).unwrap().expr {
            parser::Expr::Literal(v) => v,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(lit(r#""a\nb""#), json!("a\nb"));
    assert_eq!(lit(r#""\r\t\b\f\0""#), json!("\r\t\u{8}\u{c}\0"));
    assert_eq!(lit(r#""say \"hi\"""#), json!("say \"hi\""));
    assert_eq!(lit(r#"'it\'s'"#), json!("it's"));
    assert_eq!(lit(r#"'it"s'"#), json!("it\"s"));
    assert_eq!(lit(r#""back\\slash\/""#), json!("back\\slash/"));
    assert_eq!(lit(r#""\u00e9\u00E9""#), json!("éé"));
    assert_eq!(lit(r#""\u{1F600}""#), json!("😀"));
    assert_eq!(lit(r#""\u{e9}""#), json!("é"));
    assert_eq!(lit(r#""\uD83D\uDE00""#), json!("😀"));
    assert_eq!(lit("'héllo 😀'"), json!("héllo 😀"));
    assert_eq!(lit("\"multi\nline\""), json!("multi\nline"));
    assert_eq!(lit("''"), json!(""));
    assert!(t(r#"emoji == "\u{1F600}" && emoji == '\uD83D\uDE00'"#));
}

#[test]
fn numbers_are_exact() {
    let lit = |src: &str| -> Value {
        match Filter::parse(src).unwrap().expr {
            parser::Expr::Literal(v) => v,
            other => panic!("{other:?}"),
        }
    };
    assert!(lit("9223372036854775807").is_i64());
    assert!(lit("18446744073709551615").is_u64());
    assert!(lit("18446744073709551616").is_f64());
    assert!(lit("-9223372036854775809").is_f64());
    assert!(lit("1.0").is_f64());
    assert!(lit("-0").is_i64());
}

// ------------------------------------------------------------------- paths

#[test]
fn paths_in_filters() {
    assert!(t("addr.city == 'London'"));
    assert!(t("addr.geo[0] == 51.5"));
    assert!(t("tags[0] == 'math'"));
    assert!(t("tags[2] == 7"));
    assert!(t("matrix[1][0] == 3"));
    assert!(t("_id == 'd1'"));
    assert!(t("addr.`zip code` == 'N1'"));
    assert!(t("weird.`a.b` == 1"));
    assert!(t("weird.`` == 2"));
    assert!(t("weird.in == 3"));
    assert!(t("weird.`in` == 3"));
    assert!(t(r"weird.`\`tick\`` == 4"));
    assert!(t("weird.`0` == 5"));
    assert!(t("weird[0] == null"));
    assert!(t("tags.`0` == null"));
    assert!(t("`name` == 'Ada Lovelace'"));
}

#[test]
fn path_parse_valid() {
    use PathSegment::*;
    let segs = |s: &str| Path::parse(s).unwrap().segments().to_vec();
    assert_eq!(segs("name"), vec![Key("name".into())]);
    assert_eq!(segs("_id"), vec![Key("_id".into())]);
    assert_eq!(segs("a.b.c"), vec![Key("a".into()), Key("b".into()), Key("c".into())]);
    assert_eq!(segs("a.b[2].c"), vec![Key("a".into()), Key("b".into()), Index(2), Key("c".into())]);
    assert_eq!(segs("tags[0]"), vec![Key("tags".into()), Index(0)]);
    assert_eq!(segs("m[1][10]"), vec![Key("m".into()), Index(1), Index(10)]);
    assert_eq!(segs("`a b`.`c.d`"), vec![Key("a b".into()), Key("c.d".into())]);
    assert_eq!(segs(r"`a\`b\\c`"), vec![Key("a`b\\c".into())]);
    assert_eq!(segs("prénom.名前"), vec![Key("prénom".into()), Key("名前".into())]);
    assert_eq!(segs("a1_b2"), vec![Key("a1_b2".into())]);
    assert_eq!(segs("true.in"), vec![Key("true".into()), Key("in".into())]);
    assert_eq!(segs("``"), vec![Key(String::new())]);
    assert_eq!(segs(&format!("a[{MAX_PATH_INDEX}]")), vec![Key("a".into()), Index(MAX_PATH_INDEX)]);
}

#[test]
fn path_parse_errors() {
    path_err_at("", 0);
    path_err_at("a.", 2);
    path_err_at("a..b", 2);
    path_err_at(".a", 0);
    path_err_at("a.b.", 4);
    path_err_at("a[-1]", 2);
    path_err_at("a[01]", 2);
    path_err_at("a[]", 2);
    path_err_at("a[1", 3);
    path_err_at("a[", 2);
    path_err_at("a[x]", 2);
    path_err_at("a[ 1]", 2);
    path_err_at("a[\"k\"]", 2);
    path_err_at("a[99999999999999999999999999]", 2);
    path_err_at(&format!("a[{}]", MAX_PATH_INDEX + 1), 2);
    path_err_at("a b", 1);
    path_err_at(" a", 0);
    path_err_at("a ", 1);
    path_err_at("1a", 0);
    path_err_at("a.1", 2);
    path_err_at("a-b", 1);
    path_err_at("`abc", 0);
    path_err_at(r"`a\q`", 2);
    path_err_at("[0]", 0);
    path_err_at("a.b]", 3);
    let many = vec!["a"; MAX_PATH_SEGMENTS + 1].join(".");
    assert!(matches!(Path::parse(&many).map_err(QueryError::from), Err(QueryError::InvalidPath { .. })));
    let ok = vec!["a"; MAX_PATH_SEGMENTS].join(".");
    assert!(Path::parse(&ok).is_ok());
    assert!(matches!(
        Path::parse(&"a".repeat(MAX_PATH_LEN + 1)).map_err(QueryError::from),
        Err(QueryError::InvalidPath { .. })
    ));
}

#[test]
fn path_display_round_trips() {
    for src in ["a", "a.b[2].c", "`a b`", "x.`1`", "`true`.in", "``", r"`a\`b\\c`", "`tab\there`", "m[0][1]", "prénom"]
    {
        let p = Path::parse(src).unwrap();
        let text = p.to_string();
        assert_eq!(Path::parse(&text).unwrap(), p, "{src} -> {text}");
        // The canonical text also works inside filters.
        let f = Filter::parse(&format!("exists({text})")).unwrap();
        assert_eq!(f.expr, parser::Expr::Exists(p));
    }
    assert_eq!(Path::parse("`in`").unwrap().to_string(), "`in`");
    assert_eq!(Path::key("a b").to_string(), "`a b`");
}

#[test]
fn path_resolve() {
    let d = doc();
    let r = |s: &str| Path::parse(s).unwrap().resolve(&d).cloned();
    assert_eq!(r("addr.city"), Some(json!("London")));
    assert_eq!(r("nick"), Some(Value::Null));
    assert_eq!(r("missing"), None);
    assert_eq!(r("tags[5]"), None);
    assert_eq!(r("name[0]"), None);
    assert_eq!(r("tags.x"), None);
    assert_eq!(Path::key("x").resolve(&json!(5)), None);
    assert_eq!(Path::key("x").resolve(&json!({"x": 1})), Some(&json!(1)));
}

#[test]
fn path_from_segments() {
    use PathSegment::*;
    assert!(Path::from_segments(vec![]).is_err());
    assert!(Path::from_segments(vec![Key("a".into()), Index(MAX_PATH_INDEX + 1)]).is_err());
    let p = Path::from_segments(vec![Key("a".into()), Index(3)]).unwrap();
    assert_eq!(p, Path::parse("a[3]").unwrap());
}

#[test]
fn path_serde() {
    let p = Path::parse("a.`b c`[1]").unwrap();
    let s = serde_json::to_string(&p).unwrap();
    assert_eq!(s, r#""a.`b c`[1]""#);
    assert_eq!(serde_json::from_str::<Path>(&s).unwrap(), p);
    assert!(serde_json::from_str::<Path>(r#""a..b""#).is_err());
}

// ---------------------------------------------------------------- parameters

#[test]
fn parameters() {
    let f = Filter::parse("age > $min && name == $name || $min == 1 && x in $list").unwrap();
    assert_eq!(f.parameters(), vec!["list", "min", "name"]);
    let mut p = Params::new();
    p.insert("min".into(), json!(30));
    p.insert("name".into(), json!("Ada Lovelace"));
    p.insert("list".into(), json!([]));
    assert!(f.matches(&doc(), &p).unwrap());
    p.insert("min".into(), json!(40));
    assert!(!f.matches(&doc(), &p).unwrap());
    assert!(Filter::parse("true").unwrap().parameters().is_empty());
    // names: keywords are fine after $
    let f = Filter::parse("$in == $true").unwrap();
    assert_eq!(f.parameters(), vec!["in", "true"]);
}

#[test]
fn unknown_parameter_is_an_error() {
    let f = Filter::parse("active || age == $age").unwrap();
    // Even though `active` short-circuits, the missing binding is reported.
    assert_eq!(f.matches(&doc(), &Params::new()), Err(QueryError::UnknownParameter("age".into())));
    assert_eq!(f.check_params(&Params::new()), Err(QueryError::UnknownParameter("age".into())));
    let f = Filter::parse("x in [$b, $a]").unwrap();
    assert_eq!(f.matches(&json!({}), &Params::new()), Err(QueryError::UnknownParameter("a".into())));
    let q = Query::filter("x == $v").unwrap();
    assert_eq!(q.validate(), Err(QueryError::UnknownParameter("v".into())));
    assert!(q.matches(&json!({})).is_err());
    let q = q.param("v", json!(null));
    assert_eq!(q.validate(), Ok(()));
    assert!(q.matches(&json!({})).unwrap());
    let e = QueryError::UnknownParameter("v".into());
    assert_eq!(e.to_string(), "no value supplied for parameter `$v`");
    assert_eq!(e.position(), None);
}

// ----------------------------------------------------------- syntax errors

#[test]
fn syntax_error_positions() {
    syntax_at("", 0);
    syntax_at("   ", 0);
    syntax_at("a ==", 4);
    syntax_at("a == == b", 5);
    syntax_at("a = 1", 2);
    syntax_at("a & b", 2);
    syntax_at("a | b", 2);
    syntax_at("(a == 1", 7);
    syntax_at("a == 1)", 6);
    syntax_at("a == 1 b", 7);
    syntax_at("a b", 2);
    syntax_at("'abc", 0);
    syntax_at("x == \"abc", 5);
    syntax_at(r"'a\qb'", 2);
    syntax_at(r"'\u12'", 1);
    syntax_at(r"'\u{110000}'", 1);
    syntax_at(r"'\u{}'", 1);
    syntax_at(r"'\u{1234567}'", 1);
    syntax_at(r"'\uD800'", 1);
    syntax_at(r"'\uDC00'", 1);
    syntax_at(r"'\uD800\u0041'", 1);
    syntax_at("x == 01", 5);
    syntax_at("x == 1.", 7);
    syntax_at("x == .5", 5);
    syntax_at("x == 1e", 7);
    syntax_at("x == 1e+", 8);
    syntax_at("x == -", 5);
    syntax_at("x == - 1", 5);
    syntax_at("x == 1e999", 5);
    syntax_at("x == 12abc", 7);
    syntax_at("x == 1.2.3", 8);
    syntax_at("x == $", 5);
    syntax_at("x == $1", 5);
    syntax_at("[1, 2", 0);
    syntax_at("[1, 2,]", 6);
    syntax_at("[1 2]", 3);
    syntax_at("[,]", 1);
    syntax_at("x in [a]", 6);
    syntax_at("x in [(1)]", 6);
    syntax_at("exists", 6);
    syntax_at("exists x", 7);
    syntax_at("exists(1)", 7);
    syntax_at("exists(a", 8);
    syntax_at("exists(a b)", 9);
    syntax_at("a == b == c", 7);
    syntax_at("a < b < c", 6);
    syntax_at("&& a", 0);
    syntax_at("a &&", 4);
    syntax_at("!", 1);
    syntax_at("()", 1);
    syntax_at("a # b", 2);
    syntax_at("TRUE == ~", 8);
    syntax_at("f(x)", 1);
    syntax_at("true.x", 4);
    // A keyword never starts a path, so `in[1]` is `in` then an array.
    assert!(Filter::parse("x in[1]").is_ok());
    assert!(Filter::parse("exists(a)&&(b)").is_ok());
}

#[test]
fn path_errors_in_filters_have_absolute_positions() {
    for (src, pos) in [("x == a..b", 7), ("a.", 2), ("q || a[01] == 1", 7), ("a.b[-1] == 1", 4)] {
        match err(src) {
            QueryError::InvalidPath { position, .. } => assert_eq!(position, pos, "{src}"),
            other => panic!("{src}: {other:?}"),
        }
    }
}

#[test]
fn error_display() {
    let e = err("a == ");
    assert_eq!(e.position(), Some(5));
    assert!(e.to_string().starts_with("syntax error at byte 5:"), "{e}");
}

// ------------------------------------------------------------------ limits

#[test]
fn deep_nesting_is_rejected_not_overflowing() {
    let src = format!("{}true{}", "(".repeat(100_000), ")".repeat(100_000));
    assert!(matches!(err(&src), QueryError::TooLong { .. }));
    // Within the length limit but far beyond the depth limit.
    let src = format!("{}true{}", "(".repeat(30_000), ")".repeat(30_000));
    assert_eq!(err(&src), QueryError::TooDeep { position: MAX_DEPTH, limit: MAX_DEPTH });
    let src = format!("{}true", "!".repeat(60_000));
    assert!(matches!(err(&src), QueryError::TooDeep { .. }));
    let src = format!("{}true", "not ".repeat(10_000));
    assert!(matches!(err(&src), QueryError::TooDeep { .. }));
    let src = format!("x in {}1{}", "[".repeat(30_000), "]".repeat(30_000));
    assert!(matches!(err(&src), QueryError::TooDeep { .. }));
    // Exactly at the limit is fine.
    let src = format!("{}true{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
    assert!(t(&src));
    let src = format!("{}true{}", "(".repeat(MAX_DEPTH + 1), ")".repeat(MAX_DEPTH + 1));
    assert!(matches!(err(&src), QueryError::TooDeep { .. }));
    let src = format!("{}true", "!".repeat(MAX_DEPTH));
    assert!(t(&src));
}

#[test]
fn deep_nesting_in_a_thread_with_small_stack() {
    // Parsing 100k nested parens (over the length limit, so also try a
    // shorter one) must not overflow a small stack. (Unoptimised builds use
    // ~4 KiB of stack per nesting level, release builds under 1 KiB.)
    let handle = std::thread::Builder::new()
        .stack_size(512 * 1024)
        .spawn(|| {
            let a = Filter::parse(&format!("{}1{}", "(".repeat(100_000), ")".repeat(100_000)));
            let b = Filter::parse(&format!("{}1{}", "(".repeat(32_000), ")".repeat(32_000)));
            let c =
                Filter::parse(&format!("{}true{}", "(!x == 1 || !".repeat(MAX_DEPTH / 2), ")".repeat(MAX_DEPTH / 2)));
            (a.is_err(), b.is_err(), c.map(|f| f.matches(&json!({}), &Params::new())))
        })
        .unwrap();
    let (a, b, c) = handle.join().unwrap();
    assert!(a && b);
    assert_eq!(c, Ok(Ok(true)));
}

#[test]
fn long_flat_chains_are_fine() {
    // Many operands at one level do not nest.
    let src = vec!["a == 1"; 5000].join(" || ");
    assert!(src.len() < MAX_QUERY_LEN);
    let f = Filter::parse(&src).unwrap();
    assert!(f.matches(&json!({"a": 1}), &Params::new()).unwrap());
    assert!(!f.matches(&json!({"a": 2}), &Params::new()).unwrap());
}

#[test]
fn overlong_input_is_rejected() {
    let src = format!("x == '{}'", "a".repeat(MAX_QUERY_LEN));
    assert_eq!(err(&src), QueryError::TooLong { length: src.len(), limit: MAX_QUERY_LEN });
    let src = format!("x == '{}'", "a".repeat(MAX_QUERY_LEN - 7));
    assert_eq!(src.len(), MAX_QUERY_LEN);
    assert!(Filter::parse(&src).is_ok());
}

#[test]
fn array_literal_size_limit() {
    let ok = format!("x in [{}]", vec!["1"; MAX_ARRAY_LITERAL_LEN].join(","));
    assert!(Filter::parse(&ok).is_ok());
    let too_many = format!("x in [{}]", vec!["1"; MAX_ARRAY_LITERAL_LEN + 1].join(","));
    let expected_pos = 6 + 2 * MAX_ARRAY_LITERAL_LEN;
    assert_eq!(err(&too_many), QueryError::TooManyElements { position: expected_pos, limit: MAX_ARRAY_LITERAL_LEN });
}

// ------------------------------------------------------------ filter misc

#[test]
fn filter_accessors_and_serde() {
    let src = "a == $x && b";
    let f = Filter::parse(src).unwrap();
    assert_eq!(f.source(), src);
    assert_eq!(f.to_string(), src);
    assert_eq!(f, src.parse::<Filter>().unwrap());
    assert_ne!(f, Filter::parse("a == $x && c").unwrap());
    let json = serde_json::to_string(&f).unwrap();
    assert_eq!(json, format!("{src:?}"));
    assert_eq!(serde_json::from_str::<Filter>(&json).unwrap(), f);
    assert!(serde_json::from_str::<Filter>(r#""a =""#).is_err());
}

#[test]
fn non_object_documents() {
    let f = Filter::parse("a == null && !exists(a) && !(a > 1)").unwrap();
    for d in [json!(null), json!(1), json!("s"), json!([1, 2]), json!(true)] {
        assert!(f.matches(&d, &Params::new()).unwrap());
    }
}

// ------------------------------------------------------------------ sorting

#[test]
fn compare_values_type_order() {
    let ordered = [
        None,
        Some(json!(null)),
        Some(json!(false)),
        Some(json!(true)),
        Some(json!(-1e300)),
        Some(json!(-5)),
        Some(json!(0)),
        Some(json!(1.5)),
        Some(json!(2)),
        Some(json!(u64::MAX)),
        Some(json!(1e300)),
        Some(json!("")),
        Some(json!("A")),
        Some(json!("a")),
        Some(json!("ab")),
        Some(json!("é")),
        Some(json!([])),
        Some(json!([null])),
        Some(json!([1])),
        Some(json!([1, 2])),
        Some(json!([2])),
        Some(json!(["a"])),
        Some(json!([{}])),
        Some(json!({})),
        Some(json!({"a": 1})),
        Some(json!({"a": 1, "b": 0})),
        Some(json!({"a": 2})),
        Some(json!({"b": 0})),
    ];
    for (i, a) in ordered.iter().enumerate() {
        for (j, b) in ordered.iter().enumerate() {
            assert_eq!(compare_values(a.as_ref(), b.as_ref()), i.cmp(&j), "{a:?} vs {b:?}");
        }
    }
    assert_eq!(compare_values(Some(&json!(1)), Some(&json!(1.0))), Ordering::Equal);
    assert_eq!(compare_values(Some(&json!({"b": 1, "a": [1.0]})), Some(&json!({"a": [1], "b": 1}))), Ordering::Equal);
}

#[test]
fn compare_values_deep_nesting_does_not_overflow() {
    let mut a = json!(1);
    let mut b = json!(2);
    for _ in 0..50_000 {
        a = Value::Array(vec![a]);
        b = Value::Array(vec![b]);
    }
    let handle = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            let r = (compare_values(Some(&a), Some(&b)), super::eval::json_eq(&a, &a));
            // Dismantle without recursive drops.
            for v in [a, b] {
                let mut stack = vec![v];
                while let Some(v) = stack.pop() {
                    if let Value::Array(items) = v {
                        stack.extend(items);
                    }
                }
            }
            r
        })
        .unwrap();
    assert_eq!(handle.join().unwrap(), (Ordering::Less, true));
}

fn docs(items: &[(&str, Value)]) -> Vec<(String, Value)> {
    items.iter().map(|(id, v)| (id.to_string(), v.clone())).collect()
}

fn ids(d: &[(String, Value)]) -> Vec<&str> {
    d.iter().map(|(id, _)| id.as_str()).collect()
}

#[test]
fn query_sorting_and_ties() {
    let mut d = docs(&[
        ("e", json!({"n": "x"})),
        ("d", json!({"n": 2})),
        ("c", json!({})),
        ("b", json!({"n": 2.0})),
        ("a", json!({"n": null})),
        ("f", json!({"n": 1})),
        ("g", json!({"n": true})),
    ]);
    let q = Query::all().sort_by("n", SortOrder::Ascending).unwrap();
    q.order_and_limit(&mut d);
    assert_eq!(ids(&d), vec!["c", "a", "g", "f", "b", "d", "e"]);
    let q = Query::all().sort_by("n", SortOrder::Descending).unwrap();
    q.order_and_limit(&mut d);
    // Ties (b, d) still by id ascending.
    assert_eq!(ids(&d), vec!["e", "b", "d", "f", "g", "a", "c"]);
    let q = q.limit(3);
    q.order_and_limit(&mut d);
    assert_eq!(ids(&d), vec!["e", "b", "d"]);
}

#[test]
fn query_multiple_keys_and_limit() {
    let base = docs(&[
        ("1", json!({"g": "b", "s": 3})),
        ("2", json!({"g": "a", "s": 1})),
        ("3", json!({"g": "b", "s": 1})),
        ("4", json!({"g": "a", "s": 2})),
        ("5", json!({"g": "a", "s": 2})),
    ]);
    let q = Query::all().sort_by("g", SortOrder::Ascending).unwrap().sort_by("s", SortOrder::Descending).unwrap();
    let mut d = base.clone();
    q.order_and_limit(&mut d);
    assert_eq!(ids(&d), vec!["4", "5", "2", "1", "3"]);
    for n in 0..7 {
        let mut d = base.clone();
        q.clone().limit(n).order_and_limit(&mut d);
        let expected: Vec<&str> = vec!["4", "5", "2", "1", "3"].into_iter().take(n).collect();
        assert_eq!(ids(&d), expected, "limit {n}");
    }
    // No sort keys: by id.
    let mut d = base.clone();
    d.reverse();
    Query::all().order_and_limit(&mut d);
    assert_eq!(ids(&d), vec!["1", "2", "3", "4", "5"]);
}

#[test]
fn query_builder() {
    let q = Query::filter("a > $x")
        .unwrap()
        .param("x", json!(1))
        .sort_by("a.`b c`[0]", SortOrder::Descending)
        .unwrap()
        .limit(5);
    assert_eq!(q.limit, Some(5));
    assert_eq!(q.sort.len(), 1);
    assert_eq!(q.sort[0].order, SortOrder::Descending);
    assert!(q.matches(&json!({"a": 2})).unwrap());
    assert!(!q.matches(&json!({"a": 1})).unwrap());
    assert!(Query::all().matches(&json!(null)).unwrap());
    assert!(Query::all().sort_by("a..b", SortOrder::Ascending).is_err());
    assert!(Query::filter("a ==").is_err());
    let json = serde_json::to_value(&q).unwrap();
    assert_eq!(
        json,
        json!({"filter": "a > $x", "sort": [{"path": "a.`b c`[0]", "order": "Descending"}],
               "limit": 5, "params": {"x": 1}})
    );
    assert_eq!(serde_json::from_value::<Query>(json).unwrap(), q);
}

// ------------------------------------------------------------------ proptest

#[test]
fn required_equalities_are_the_top_level_field_equalities() {
    let mut params = Params::new();
    params.insert("team".into(), json!("north"));
    params.insert("none".into(), json!(null));
    let eq = |src: &str| Filter::parse(src).unwrap().required_equalities(&params);
    let keys = |k: &[&str]| k.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        eq("type == 'todo' && done && team == $team && 3 == a.b && tags[0] == 'x' && n > 2"),
        vec![
            (keys(&["type"]), json!("todo")),
            (keys(&["done"]), json!(true)),
            (keys(&["team"]), json!("north")),
            (keys(&["a", "b"]), json!(3)),
        ]
    );
    // null (a missing field equals it), disjunctions, negations and unbound parameters say nothing.
    assert!(eq("x == null && y == $none && z == $unbound").is_empty());
    assert!(eq("a == 1 || b == 2").is_empty());
    assert!(eq("!(a == 1) && a != 2").is_empty());
    assert_eq!(eq("(a == 1 || b == 2) && c == 'k'"), vec![(keys(&["c"]), json!("k"))]);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            any::<u64>().prop_map(|u| json!(u)),
            (-1e6f64..1e6).prop_map(|f| json!(f)),
            prop::sample::select(vec![0.0, -0.0, 1.0, 2.0, 1e300, -1e300, 0.5]).prop_map(|f| json!(f)),
            "[a-c]{0,3}".prop_map(Value::String),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map("[a-c_]{0,2}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn token() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "a", "b", "a.b", "a[0]", "tags[1]", "`x y`", "_id", "$p", "$q", "1", "-2.5", "1e3", "'s'", "\"t\"", "true",
            "false", "null", "==", "!=", "<", "<=", ">", ">=", "&&", "||", "!", "and", "or", "not", "contains", "in",
            "exists", "(", ")", "[", "]", ",", " ", ".", "$", "'", "\"", "`", "\\", "\\u{", "-", "=", "&", "|", "0",
            "a.", "[0]",
        ])
        .prop_map(str::to_string)
    }

    fn params() -> Params {
        let mut p = Params::new();
        p.insert("p".into(), json!([1, "s", null]));
        p.insert("q".into(), json!("s"));
        p
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn parse_never_panics_on_arbitrary_strings(s in any::<String>()) {
            let _ = Filter::parse(&s);
            let _ = Path::parse(&s);
        }

        #[test]
        fn parse_never_panics_on_token_soup(tokens in prop::collection::vec(token(), 0..40),
                                            d in arb_json()) {
            let src = tokens.concat();
            if let Ok(f) = Filter::parse(&src) {
                let _ = f.matches(&d, &params());
                let _ = f.matches(&d, &Params::new());
            }
            let src = tokens.join(" ");
            if let Ok(f) = Filter::parse(&src) {
                let _ = f.matches(&d, &params());
            }
            let _ = Path::parse(&tokens.concat());
        }

        #[test]
        fn errors_point_inside_the_text(s in "[ -~]{0,40}") {
            if let Err(e) = Filter::parse(&s) {
                let pos = e.position().unwrap();
                prop_assert!(pos <= s.len(), "{:?} at {} in {:?}", e, pos, s);
                prop_assert!(s.is_char_boundary(pos));
            }
        }

        #[test]
        fn matches_never_panics_on_arbitrary_docs(d in arb_json(), k in "[a-c_]{1,2}") {
            let p = params();
            for src in [
                format!("{k} == 1 || {k} != 'x' && {k} < 2 || {k} >= 'a'"),
                format!("{k} contains $q || {k} in $p || $q in {k} || {k}[0].a == null"),
                format!("exists({k}.a[1]) && !{k} || {k} == [1, $q] || {k} contains [1]"),
                format!("{k} == {{}} || {k}"),
            ] {
                if let Ok(f) = Filter::parse(&src) {
                    let _ = f.matches(&d, &p);
                }
            }
            // A document compared with itself is always equal.
            let mut p = Params::new();
            p.insert("d".into(), d.clone());
            let f = Filter::parse("$d == $d && [$d] contains $d && $d in [$d]").unwrap();
            prop_assert!(f.matches(&d, &p).unwrap());
        }

        #[test]
        fn compare_values_is_a_total_order(a in prop::option::of(arb_json()),
                                           b in prop::option::of(arb_json()),
                                           c in prop::option::of(arb_json())) {
            let (a, b, c) = (a.as_ref(), b.as_ref(), c.as_ref());
            // reflexive
            prop_assert_eq!(compare_values(a, a), Ordering::Equal);
            // antisymmetric
            prop_assert_eq!(compare_values(a, b), compare_values(b, a).reverse());
            prop_assert_eq!(compare_values(b, c), compare_values(c, b).reverse());
            // transitive
            let ab = compare_values(a, b);
            let bc = compare_values(b, c);
            let ac = compare_values(a, c);
            if ab != Ordering::Greater && bc != Ordering::Greater {
                prop_assert_ne!(ac, Ordering::Greater);
            }
            if ab != Ordering::Less && bc != Ordering::Less {
                prop_assert_ne!(ac, Ordering::Less);
            }
            if ab == Ordering::Equal && bc == Ordering::Equal {
                prop_assert_eq!(ac, Ordering::Equal);
            }
            // Equal in the order iff equal under ==.
            if let (Some(x), Some(y)) = (a, b) {
                prop_assert_eq!(ab == Ordering::Equal, super::super::eval::json_eq(x, y));
            }
        }

        #[test]
        fn sorting_is_consistent(values in prop::collection::vec(arb_json(), 0..12), n in 0usize..14) {
            let base: Vec<(String, Value)> = values
                .into_iter()
                .enumerate()
                .map(|(i, v)| (format!("{:02}", (i * 7) % 13), json!({"k": v})))
                .collect();
            let q = Query::all().sort_by("k", SortOrder::Descending).unwrap();
            let mut full = base.clone();
            q.order_and_limit(&mut full);
            for w in full.windows(2) {
                prop_assert_ne!(q.compare(&w[0], &w[1]), Ordering::Greater);
            }
            let mut limited = base.clone();
            q.clone().limit(n).order_and_limit(&mut limited);
            full.truncate(n);
            prop_assert_eq!(ids(&limited), ids(&full));
        }

        /// Whatever filter is made of tokens: each equality it says is required holds in every document it matches.
        #[test]
        fn required_equalities_hold_in_every_match(doc in arb_json(), toks in prop::collection::vec(token(), 1..12)) {
            let Ok(f) = Filter::parse(&toks.concat()) else { return Ok(()) };
            let params = params();
            if f.matches(&doc, &params).unwrap_or(false) {
                for (keys, value) in f.required_equalities(&params) {
                    let path = Path::from_segments(keys.into_iter().map(PathSegment::Key).collect()).unwrap();
                    let mut with = Params::new();
                    with.insert("v".into(), value);
                    let eq = Filter::parse(&format!("{path} == $v")).unwrap();
                    prop_assert!(eq.matches(&doc, &with).unwrap(), "{} in {}", eq, doc);
                }
            }
        }

        #[test]
        fn path_display_round_trip(keys in prop::collection::vec(
            prop_oneof![any::<String>().prop_map(PathSegment::Key),
                        (0usize..1000).prop_map(PathSegment::Index)], 1..6)) {
            let mut segs = keys;
            if let PathSegment::Index(_) = segs[0] {
                segs[0] = PathSegment::Key("k".into());
            }
            let p = Path::from_segments(segs).unwrap();
            let text = p.to_string();
            prop_assert_eq!(Path::parse(&text).unwrap(), p.clone());
            let f = Filter::parse(&format!("exists({text}) || {text} == 1")).unwrap();
            let empty = json!({});
            let result = f.matches(&empty, &Params::new());
            prop_assert!(result.is_ok());
        }
    }
}
