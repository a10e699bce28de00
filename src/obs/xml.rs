//! A minimal element tree over quick-xml's event reader. OBS documents are small and their element
//! order varies between server versions (and the docs' own examples are not schema-valid), so a
//! tolerant tree with "find the child named X" lookups beats a strict serde mapping here.

use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    /// The element's own character data (entities resolved, line ends normalised), untrimmed.
    pub text: String,
}

impl Element {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// `<name>` as an attribute or, failing that, as the text of a child element (OBS reads both).
    pub fn field(&self, name: &str) -> Option<String> {
        self.attr(name).map(str::to_string).or_else(|| self.child(name).map(|c| c.text.clone()))
    }
}

fn start_element(e: &BytesStart) -> Result<Element, String> {
    let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
    let mut attrs = Vec::new();
    for a in e.attributes() {
        let a = a.map_err(|err| format!("bad attribute in <{name}>: {err}"))?;
        let key = String::from_utf8_lossy(a.key.as_ref()).into_owned();
        let value = a.unescape_value().map_err(|err| format!("bad attribute {key} in <{name}>: {err}"))?;
        attrs.push((key, value.into_owned()));
    }
    Ok(Element { name, attrs, ..Element::default() })
}

/// Deepest element nesting accepted. OBS documents nest a few levels; dropping, cloning or
/// comparing a tree is recursive, so a deeper body (from IBS or whatever answers in its place)
/// could overflow the stack.
const MAX_DEPTH: usize = 256;

/// Parses a whole document into its root element.
pub fn parse(xml: &str) -> Result<Element, String> {
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<Element> = Vec::new();
    let too_deep = || format!("XML nested deeper than {MAX_DEPTH} elements");
    loop {
        let event = reader
            .read_event()
            .map_err(|e| format!("XML error at byte {}: {e}", reader.buffer_position()))?;
        match event {
            Event::Start(_) | Event::Empty(_) if stack.len() >= MAX_DEPTH => return Err(too_deep()),
            Event::Start(e) => stack.push(start_element(&e)?),
            Event::Empty(e) => {
                let el = start_element(&e)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => return Ok(el),
                }
            }
            Event::End(_) => {
                let el = stack.pop().ok_or("unbalanced end tag")?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => return Ok(el),
                }
            }
            Event::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&t.xml_content().map_err(|e| e.to_string())?);
                }
            }
            Event::CData(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&t.decode().map_err(|e| e.to_string())?);
                }
            }
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref().map_err(|e| e.to_string())? {
                    Some(c) => c.to_string(),
                    None => {
                        let name = r.decode().map_err(|e| e.to_string())?;
                        resolve_predefined_entity(&name)
                            .ok_or_else(|| format!("unknown entity &{name};"))?
                            .to_string()
                    }
                };
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&resolved);
                }
            }
            Event::Eof => return Err("document ends before its root element does".into()),
            _ => {}
        }
    }
}

/// Escapes text for an element body or a double-quoted attribute the way OBS's Builder
/// templates do: `&`, `<`, `>` and `"`, apostrophes left alone (error bodies compare byte-exact).
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// OBS's error and success body: `<status code=".."><summary>..</summary></status>`.
pub fn parse_status(body: &str) -> Option<(String, String)> {
    let root = parse(body).ok()?;
    if root.name != "status" {
        return None;
    }
    let code = root.attr("code").unwrap_or_default().to_string();
    let summary = root.child("summary").map(|s| s.text.trim().to_string()).unwrap_or_default();
    Some((code, summary))
}

/// The body OBS's `render_error` produces (see fixtures/obs/derived).
pub fn status_body(code: &str, summary: &str) -> String {
    format!("<status code=\"{}\">\n  <summary>{}</summary>\n</status>\n", esc(code), esc(summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entities_cdata_and_nesting() {
        let root = parse(
            "<?xml version=\"1.0\"?><a x=\"1 &amp; 2\"><b>t &lt;&#64;&#x41;&gt;<![CDATA[<c>]]></b><c/></a>",
        )
        .unwrap();
        assert_eq!(root.attr("x"), Some("1 & 2"));
        assert_eq!(root.child("b").unwrap().text, "t <@A><c>");
        assert!(root.child("c").is_some());
        assert!(parse("<a><b></a>").is_err());
        assert!(parse("<a>").is_err());
    }

    #[test]
    fn a_body_nested_deeper_than_any_obs_document_is_an_error_not_a_crash() {
        let deep = |levels: usize| format!("{}{}", "<a>".repeat(levels), "</a>".repeat(levels));
        let e = parse(&deep(100_000)).unwrap_err();
        assert_eq!(e, "XML nested deeper than 256 elements");
        let e = parse(&format!("{}<b/>{}", "<a>".repeat(256), "</a>".repeat(256))).unwrap_err();
        assert_eq!(e, "XML nested deeper than 256 elements", "an empty element is one level too");
        assert!(parse(&deep(256)).is_ok());
        assert_eq!(parse_status(&deep(100_000)), None);
    }

    #[test]
    fn status_bodies_as_obs_writes_them() {
        // OBS's own bytes (tests/fixtures/obs/derived), not ones status_body made
        let not_found = include_str!("../../tests/fixtures/obs/derived/status-404-review_not_found.xml");
        assert_eq!(parse_status(not_found), Some(("review_not_found".into(), "Review not found".into())));
        assert_eq!(status_body("review_not_found", "Review not found").trim_end(), not_found.trim_end());
        let obs = include_str!(
            "../../tests/fixtures/obs/derived/status-403-review_change_state_no_permission-group.xml"
        );
        let (code, summary) = parse_status(obs).unwrap();
        assert_eq!(code, "review_change_state_no_permission");
        assert_eq!(summary, "review state change for group qam-openqa is not permitted for someuser");
        assert_eq!(
            status_body("a&b", "<x> \"y\""),
            "<status code=\"a&amp;b\">\n  <summary>&lt;x&gt; &quot;y&quot;</summary>\n</status>\n"
        );
        assert_eq!(parse_status("<html>Bad gateway</html>"), None);
    }
}
