//! Machine-readable serial records: the last stage of the boot flow, where
//! the kernel reports what it found and measured.
//!
//! Every record is exactly one line, `HB ` followed by one JSON object whose
//! first field is `"event"`:
//!
//! ```text
//! HB {"event":"boot","cpus_listed":4,"hypervisor":"tcg","pv_features":["clocksource"]}
//! ```
//!
//! Tools parse these lines and ignore everything else on the console, so the
//! prose around them can change freely. This module owns the encoding: JSON
//! string escaping, number formatting and the one-line guarantee. It writes
//! through any [`core::fmt::Write`] without allocating.
//!
//! A [`Record`] borrows its writer mutably from [`Record::begin`] to
//! [`Record::end`], so a caller that holds the console lock for that borrow
//! emits the whole line without another CPU's output landing in the middle.
//! [`emit`] does begin, fields and end in one call.
//!
//! Keys are `&'static str`: they are the schema that tools rely on, never
//! data, and an error can then name the key that went wrong.

use core::fmt::{self, Write};

/// The prefix that marks a line as a record.
pub const PREFIX: &str = "HB ";

/// Digits after the decimal point written by [`Object::f64`].
pub const F64_DECIMALS: usize = 3;

/// Why a record could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The underlying writer failed (the console reported an error).
    Write,
    /// The closure given to [`Object::raw`] for this key wrote a line
    /// break, which would split the record over two lines.
    LineBreakInRaw { key: &'static str },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Write => write!(f, "HB record: the console writer failed"),
            Error::LineBreakInRaw { key } => {
                write!(
                    f,
                    "HB record: raw value for key \"{key}\" contains a line break"
                )
            }
        }
    }
}

impl From<fmt::Error> for Error {
    fn from(_: fmt::Error) -> Self {
        Error::Write
    }
}

/// Writes one complete record: `HB {"event":<event>` + the fields written by
/// `fields` + `}` and a newline.
///
/// When a field fails, the half-written line is still ended with a newline
/// (best effort) so that the next line starts clean; the truncated record is
/// not valid JSON, so tools drop it instead of misreading it.
pub fn emit<W, F>(w: &mut W, event: &str, fields: F) -> Result<(), Error>
where
    W: Write + ?Sized,
    F: FnOnce(&mut Object<'_, W>) -> Result<(), Error>,
{
    let result = Record::begin(&mut *w, event).and_then(|mut r| {
        fields(&mut r)?;
        r.end()
    });
    if result.is_err() {
        let _ = w.write_char('\n');
    }
    result
}

/// One record being written. Dereferences to [`Object`] for the field
/// methods.
#[must_use = "a record must be finished with `end()`, or the line stays open"]
pub struct Record<'w, W: Write + ?Sized> {
    obj: Object<'w, W>,
}

impl<'w, W: Write + ?Sized> Record<'w, W> {
    /// Writes `HB {"event":"<event>"`.
    pub fn begin(w: &'w mut W, event: &str) -> Result<Self, Error> {
        w.write_str(PREFIX)?;
        w.write_char('{')?;
        let mut obj = Object { w, empty: true };
        obj.str("event", event)?;
        Ok(Record { obj })
    }

    /// Closes the object and the line: writes `}` and `\n`.
    pub fn end(self) -> Result<(), Error> {
        self.obj.w.write_str("}\n")?;
        Ok(())
    }
}

impl<'w, W: Write + ?Sized> core::ops::Deref for Record<'w, W> {
    type Target = Object<'w, W>;
    fn deref(&self) -> &Self::Target {
        &self.obj
    }
}

impl<W: Write + ?Sized> core::ops::DerefMut for Record<'_, W> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.obj
    }
}

/// The fields of a JSON object, written one after another. Each method
/// writes `,"key":value` (without the comma for the first field) and returns
/// `self` so calls can be chained or ended with `?`.
pub struct Object<'w, W: Write + ?Sized> {
    w: &'w mut W,
    empty: bool,
}

impl<W: Write + ?Sized> Object<'_, W> {
    fn key(&mut self, key: &str) -> Result<(), Error> {
        if !self.empty {
            self.w.write_char(',')?;
        }
        self.empty = false;
        write_json_str(self.w, key)?;
        self.w.write_char(':')?;
        Ok(())
    }

    pub fn u64(&mut self, key: &'static str, v: u64) -> Result<&mut Self, Error> {
        self.key(key)?;
        write!(self.w, "{v}")?;
        Ok(self)
    }

    pub fn i64(&mut self, key: &'static str, v: i64) -> Result<&mut Self, Error> {
        self.key(key)?;
        write!(self.w, "{v}")?;
        Ok(self)
    }

    pub fn bool(&mut self, key: &'static str, v: bool) -> Result<&mut Self, Error> {
        self.key(key)?;
        self.w.write_str(if v { "true" } else { "false" })?;
        Ok(self)
    }

    /// Writes `null`, for a value that is known to be absent.
    pub fn null(&mut self, key: &'static str) -> Result<&mut Self, Error> {
        self.key(key)?;
        self.w.write_str("null")?;
        Ok(self)
    }

    /// A finite value with [`F64_DECIMALS`] digits after the point; NaN and
    /// the infinities have no JSON spelling and become `null`.
    pub fn f64(&mut self, key: &'static str, v: f64) -> Result<&mut Self, Error> {
        self.f64_decimals(key, v, F64_DECIMALS)
    }

    /// Like [`Object::f64`] with a chosen number of decimals.
    pub fn f64_decimals(
        &mut self,
        key: &'static str,
        v: f64,
        decimals: usize,
    ) -> Result<&mut Self, Error> {
        self.key(key)?;
        if v.is_finite() {
            // Fixed notation never produces an exponent, NaN or `inf`, so
            // the digits are always a valid JSON number.
            write!(self.w, "{v:.decimals$}")?;
        } else {
            self.w.write_str("null")?;
        }
        Ok(self)
    }

    /// A JSON string.
    pub fn str(&mut self, key: &'static str, v: &str) -> Result<&mut Self, Error> {
        self.key(key)?;
        write_json_str(self.w, v)?;
        Ok(self)
    }

    /// A JSON string holding `v`'s `Display` output, escaped as it is
    /// produced (no buffer).
    pub fn display(&mut self, key: &'static str, v: &dyn fmt::Display) -> Result<&mut Self, Error> {
        self.key(key)?;
        write_json_display(self.w, v)?;
        Ok(self)
    }

    /// A string `"0x…"` in lowercase hex, for addresses: JSON readers that
    /// use doubles lose precision above 2^53.
    pub fn hex(&mut self, key: &'static str, v: u64) -> Result<&mut Self, Error> {
        self.key(key)?;
        write!(self.w, "\"{v:#x}\"")?;
        Ok(self)
    }

    /// An array of strings, each `Display`ed and escaped.
    pub fn strs<I>(&mut self, key: &'static str, items: I) -> Result<&mut Self, Error>
    where
        I: IntoIterator,
        I::Item: fmt::Display,
    {
        self.key(key)?;
        self.w.write_char('[')?;
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                self.w.write_char(',')?;
            }
            write_json_display(self.w, &item)?;
        }
        self.w.write_char(']')?;
        Ok(self)
    }

    /// An array of unsigned integers.
    pub fn u64s<I>(&mut self, key: &'static str, items: I) -> Result<&mut Self, Error>
    where
        I: IntoIterator<Item = u64>,
    {
        self.key(key)?;
        self.w.write_char('[')?;
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                self.w.write_char(',')?;
            }
            write!(self.w, "{item}")?;
        }
        self.w.write_char(']')?;
        Ok(self)
    }

    /// A nested object whose fields `fields` writes.
    pub fn object<F>(&mut self, key: &'static str, fields: F) -> Result<&mut Self, Error>
    where
        F: FnOnce(&mut Object<'_, W>) -> Result<(), Error>,
    {
        self.key(key)?;
        self.w.write_char('{')?;
        let mut inner = Object {
            w: &mut *self.w,
            empty: true,
        };
        fields(&mut inner)?;
        self.w.write_char('}')?;
        Ok(self)
    }

    /// A value the caller writes as JSON text itself. The caller answers for
    /// its syntax; a line break is refused because it would end the record
    /// early.
    pub fn raw<F>(&mut self, key: &'static str, value: F) -> Result<&mut Self, Error>
    where
        F: FnOnce(&mut dyn Write) -> fmt::Result,
    {
        self.key(key)?;
        let mut guard = NoLineBreaks {
            w: &mut *self.w,
            saw_break: false,
        };
        let r = value(&mut guard);
        if guard.saw_break {
            return Err(Error::LineBreakInRaw { key });
        }
        r?;
        Ok(self)
    }
}

/// Passes text through but stops at the first line break.
struct NoLineBreaks<'a, W: Write + ?Sized> {
    w: &'a mut W,
    saw_break: bool,
}

impl<W: Write + ?Sized> Write for NoLineBreaks<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if s.contains(['\n', '\r']) {
            self.saw_break = true;
            return Err(fmt::Error);
        }
        self.w.write_str(s)
    }
}

/// Escapes everything written through it as the inside of a JSON string.
struct JsonEscape<'a, W: Write + ?Sized> {
    w: &'a mut W,
}

impl<W: Write + ?Sized> Write for JsonEscape<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Copy runs of plain ASCII in one call; escape the rest. Records stay
        // pure ASCII (RFC 8259 section 7 allows `\u` escapes for any code
        // point), so a serial log never carries multi-byte sequences that a
        // line-oriented tool could split.
        let mut plain_start = 0;
        for (i, c) in s.char_indices() {
            let plain = (' '..='~').contains(&c) && c != '"' && c != '\\';
            if plain {
                continue;
            }
            self.w.write_str(&s[plain_start..i])?;
            plain_start = i + c.len_utf8();
            match c {
                '"' => self.w.write_str("\\\"")?,
                '\\' => self.w.write_str("\\\\")?,
                _ => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        write!(self.w, "\\u{:04x}", unit)?;
                    }
                }
            }
        }
        self.w.write_str(&s[plain_start..])
    }
}

fn write_json_str<W: Write + ?Sized>(w: &mut W, s: &str) -> fmt::Result {
    w.write_char('"')?;
    JsonEscape { w: &mut *w }.write_str(s)?;
    w.write_char('"')
}

fn write_json_display<W: Write + ?Sized>(w: &mut W, v: &dyn fmt::Display) -> fmt::Result {
    w.write_char('"')?;
    write!(JsonEscape { w: &mut *w }, "{v}")?;
    w.write_char('"')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Checks the line shape and returns the parsed object.
    fn parse_line(line: &str) -> Value {
        assert!(line.starts_with(PREFIX), "no prefix: {line:?}");
        assert!(line.ends_with('\n'), "no newline: {line:?}");
        let body = &line[PREFIX.len()..line.len() - 1];
        assert!(
            !body.contains('\n') && !body.contains('\r'),
            "record spans lines: {line:?}"
        );
        assert!(body.is_ascii(), "record is not ASCII: {line:?}");
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
    }

    #[test]
    fn example_from_the_brief_round_trips() {
        let mut out = String::new();
        let mut r = Record::begin(&mut out, "boot").unwrap();
        r.u64("cpus_listed", 4).unwrap();
        r.str("hypervisor", "tcg").unwrap();
        r.strs("pv_features", ["clocksource"]).unwrap();
        r.end().unwrap();
        assert_eq!(
            out,
            "HB {\"event\":\"boot\",\"cpus_listed\":4,\"hypervisor\":\"tcg\",\
             \"pv_features\":[\"clocksource\"]}\n"
        );
        let v = parse_line(&out);
        assert_eq!(v["event"], "boot");
        assert_eq!(v["cpus_listed"], 4);
    }

    #[test]
    fn event_is_the_first_key() {
        let mut out = String::new();
        emit(&mut out, "x", |r| {
            r.u64("a", 1)?;
            Ok(())
        })
        .unwrap();
        assert!(out.starts_with("HB {\"event\":\"x\","), "{out}");
    }

    #[test]
    fn all_value_kinds_round_trip() {
        let mut out = String::new();
        emit(&mut out, "kinds", |r| {
            r.u64("max", u64::MAX)?
                .i64("min", i64::MIN)?
                .i64("neg", -7)?
                .bool("t", true)?
                .bool("f", false)?
                .null("none")?
                .f64("ratio", 1.5)?
                .f64_decimals("precise", 2.0 / 3.0, 6)?
                .hex("addr", 0xfee0_0000)?
                .display("shown", &format_args!("{}-{}", 1, "a\"b"))?
                .u64s("list", [1, 2, 3])?
                .strs("empty", core::iter::empty::<&str>())?;
            Ok(())
        })
        .unwrap();
        let v = parse_line(&out);
        assert_eq!(v["max"].as_u64(), Some(u64::MAX));
        assert_eq!(v["min"].as_i64(), Some(i64::MIN));
        assert_eq!(v["neg"], -7);
        assert_eq!(v["t"], true);
        assert_eq!(v["f"], false);
        assert!(v["none"].is_null());
        assert_eq!(v["ratio"].as_f64(), Some(1.5));
        assert_eq!(v["precise"].as_f64(), Some(0.666667));
        assert_eq!(v["addr"], "0xfee00000");
        assert_eq!(v["shown"], "1-a\"b");
        assert_eq!(v["list"], serde_json::json!([1, 2, 3]));
        assert_eq!(v["empty"], serde_json::json!([]));
    }

    #[test]
    fn nasty_strings_are_escaped_and_round_trip() {
        let nasty = [
            "",
            "quote\" backslash\\ slash/",
            "line\nbreak\r\n tab\t nul\0 bell\x07 esc\x1b del\x7f",
            "unicode é ü 漢字 and astral 🦀",
            "\\u0041 looks like an escape",
            "}\nHB {\"event\":\"forged\"}",
        ];
        for s in nasty {
            let mut out = String::new();
            emit(&mut out, s, |r| {
                r.str("s", s)?.strs("a", [s, s])?.display("d", &s)?;
                Ok(())
            })
            .unwrap();
            let v = parse_line(&out);
            assert_eq!(v["event"], s);
            assert_eq!(v["s"], s);
            assert_eq!(v["a"][1], s);
            assert_eq!(v["d"], s);
        }
    }

    #[test]
    fn control_characters_use_u00xx_escapes() {
        let mut out = String::new();
        emit(&mut out, "e", |r| {
            r.str("s", "\n\x01")?;
            Ok(())
        })
        .unwrap();
        assert!(out.contains(r#""s":"\u000a\u0001""#), "{out}");
    }

    #[test]
    fn nested_objects_round_trip() {
        let mut out = String::new();
        emit(&mut out, "nest", |r| {
            r.object("counters", |o| {
                o.u64("invlpg", 390)?.object("deeper", |d| {
                    d.bool("ok", true)?;
                    Ok(())
                })?;
                Ok(())
            })?
            .object("empty", |_| Ok(()))?
            .u64("after", 1)?;
            Ok(())
        })
        .unwrap();
        let v = parse_line(&out);
        assert_eq!(v["counters"]["invlpg"], 390);
        assert_eq!(v["counters"]["deeper"]["ok"], true);
        assert_eq!(v["empty"], serde_json::json!({}));
        assert_eq!(v["after"], 1);
    }

    #[test]
    fn f64_edge_cases() {
        let cases: [(f64, Option<f64>); 9] = [
            (f64::NAN, None),
            (f64::INFINITY, None),
            (f64::NEG_INFINITY, None),
            (0.0, Some(0.0)),
            (-0.0, Some(0.0)),
            (1e-9, Some(0.0)),
            (-2.5, Some(-2.5)),
            (123456.7894, Some(123456.789)),
            (1e300, Some(1e300)),
        ];
        for (x, want) in cases {
            let mut out = String::new();
            emit(&mut out, "f", |r| {
                r.f64("x", x)?;
                Ok(())
            })
            .unwrap();
            let v = parse_line(&out);
            match want {
                None => assert!(v["x"].is_null(), "{x} gave {out}"),
                Some(w) => assert_eq!(v["x"].as_f64(), Some(w), "{x} gave {out}"),
            }
        }
    }

    #[test]
    fn raw_values_are_written_verbatim_but_line_breaks_are_refused() {
        let mut out = String::new();
        emit(&mut out, "raw", |r| {
            r.raw("arr", |w| write!(w, "[{},{}]", 1, 2))?;
            Ok(())
        })
        .unwrap();
        assert_eq!(parse_line(&out)["arr"], serde_json::json!([1, 2]));

        let mut out = String::new();
        let err = emit(&mut out, "raw", |r| {
            r.raw("bad", |w| w.write_str("1\n"))?;
            Ok(())
        })
        .unwrap_err();
        assert_eq!(err, Error::LineBreakInRaw { key: "bad" });
        // Only `emit`'s closing newline ends the line, and what it ends is
        // not a record a tool would accept.
        assert_eq!(out.matches('\n').count(), 1, "{out:?}");
        assert!(out.ends_with('\n'));
        assert!(
            serde_json::from_str::<Value>(&out[PREFIX.len()..]).is_err(),
            "{out:?}"
        );
        assert!(err.to_string().contains("\"bad\""));
    }

    /// A console that fails after `budget` bytes.
    struct Failing {
        budget: usize,
    }
    impl Write for Failing {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            self.budget = self.budget.checked_sub(s.len()).ok_or(fmt::Error)?;
            Ok(())
        }
    }

    #[test]
    fn writer_failures_surface_as_errors() {
        for budget in [0, 5, 20] {
            let mut w = Failing { budget };
            let r = emit(&mut w, "boot", |r| {
                r.str("hypervisor", "tcg")?;
                Ok(())
            });
            assert_eq!(r, Err(Error::Write), "budget {budget}");
        }
    }

    #[test]
    fn works_through_a_dyn_writer() {
        let mut s = String::new();
        let w: &mut dyn Write = &mut s;
        emit(w, "dyn", |r| {
            r.u64("n", 1)?;
            Ok(())
        })
        .unwrap();
        assert_eq!(parse_line(&s)["n"], 1);
    }
}
