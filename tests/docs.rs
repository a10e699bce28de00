//! The configuration reference lists every key with the default the code uses.

use incident_gate::config::Config;

#[test]
fn configuration_reference_lists_every_key_with_its_default() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md")).unwrap();
    let defaults = serde_json::to_value(Config::default()).unwrap();
    for (key, value) in defaults.as_object().unwrap() {
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| `{key}` |")))
            .unwrap_or_else(|| panic!("docs/configuration.md has no row for `{key}`"));
        let shown = match value {
            serde_json::Value::Null => "–".to_string(),
            serde_json::Value::String(s) => format!("`{s}`"),
            serde_json::Value::Array(items) => {
                let items: Vec<&str> = items.iter().filter_map(|i| i.as_str()).collect();
                format!("`{}`", items.join(", "))
            }
            other => format!("`{other}`"),
        };
        let cell = row.split('|').nth(2).unwrap().trim();
        // the AMQP URL default is shown in full in the docs (guest/guest is no secret)
        if key == "amqp_url" {
            assert_eq!(cell, format!("`{}`", Config::default().amqp_url.expose()));
        } else {
            assert_eq!(cell, shown, "default of `{key}` in docs/configuration.md");
        }
    }
}
