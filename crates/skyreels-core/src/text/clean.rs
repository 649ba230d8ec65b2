//! Prompt cleaning as the reference pipelines do it before tokenising: `ftfy.fix_text`, HTML
//! unescaping twice, whitespace collapse.
//!
//! ftfy is a large Python library; this ports the repairs that change real prompts:
//! UTF-8 text mis-decoded as Windows-1252 ("cafÃ©" → "café"), curly quotes made straight,
//! Latin ligatures and full-width forms expanded, control characters removed, NFC.

use unicode_normalization::UnicodeNormalization;

/// Cleans a prompt exactly as far as the reference's `prompt_clean` matters for tokenising.
pub fn clean_prompt(text: &str) -> String {
    let fixed = fix_text(text);
    let unescaped = html_unescape(&html_unescape(&fixed));
    unescaped.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn fix_text(text: &str) -> String {
    let text = repair_mojibake(text).unwrap_or_else(|| text.to_string());
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}' => out.push('\''),
            '\u{201C}' | '\u{201D}' | '\u{201E}' | '\u{201F}' => out.push('"'),
            '\u{FB00}' => out.push_str("ff"),
            '\u{FB01}' => out.push_str("fi"),
            '\u{FB02}' => out.push_str("fl"),
            '\u{FB03}' => out.push_str("ffi"),
            '\u{FB04}' => out.push_str("ffl"),
            '\u{FB05}' | '\u{FB06}' => out.push_str("st"),
            '\u{3000}' => out.push(' '),
            '\u{FF01}'..='\u{FF5E}' => out.push(char::from_u32(c as u32 - 0xFEE0).unwrap_or(c)),
            '\u{0}'..='\u{8}' | '\u{B}' | '\u{E}'..='\u{1F}' | '\u{7F}' | '\u{FEFF}' => {}
            _ => out.push(c),
        }
    }
    out.nfc().collect()
}

/// Windows-1252 bytes 0x80–0x9F (0 = undefined there).
const CP1252_HIGH: [u16; 32] = [
    0x20AC, 0, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0, 0x017D, 0, 0,
    0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0, 0x017E, 0x0178,
];

fn cp1252_byte(c: char) -> Option<u8> {
    let code = c as u32;
    if code < 0x80 || (0xA0..=0xFF).contains(&code) {
        return Some(code as u8);
    }
    CP1252_HIGH.iter().position(|&h| h != 0 && h as u32 == code).map(|i| 0x80 + i as u8)
}

/// If the whole text reads as UTF-8 once mapped back to Windows-1252 bytes, it was mis-decoded.
fn repair_mojibake(text: &str) -> Option<String> {
    let bytes: Vec<u8> = text.chars().map(cp1252_byte).collect::<Option<_>>()?;
    if bytes.iter().all(|&b| b < 0x80) {
        return None;
    }
    String::from_utf8(bytes).ok()
}

/// Named entities beyond the five XML ones that show up in scraped prompts.
const ENTITIES: &[(&str, &str)] = &[
    ("amp", "&"),
    ("lt", "<"),
    ("gt", ">"),
    ("quot", "\""),
    ("apos", "'"),
    ("nbsp", "\u{A0}"),
    ("copy", "©"),
    ("reg", "®"),
    ("trade", "™"),
    ("hellip", "…"),
    ("mdash", "—"),
    ("ndash", "–"),
    ("lsquo", "‘"),
    ("rsquo", "’"),
    ("ldquo", "“"),
    ("rdquo", "”"),
    ("laquo", "«"),
    ("raquo", "»"),
    ("deg", "°"),
    ("times", "×"),
    ("middot", "·"),
    ("bull", "•"),
    ("euro", "€"),
    ("pound", "£"),
    ("yen", "¥"),
    ("cent", "¢"),
    ("sect", "§"),
    ("para", "¶"),
];

/// Replaces `&name;`, `&#NNN;` and `&#xHH;` references; anything else is kept as written.
fn html_unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('&') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let end = after.find(';').filter(|&e| e <= 32);
        let decoded = end.and_then(|e| decode_entity(&after[..e]));
        match (end, decoded) {
            (Some(e), Some(value)) => {
                out.push_str(&value);
                rest = &after[e + 1..];
            }
            _ => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn decode_entity(name: &str) -> Option<String> {
    if let Some(number) = name.strip_prefix('#') {
        let code = match number.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => number.parse().ok()?,
        };
        return Some(char::from_u32(code).unwrap_or('\u{FFFD}').to_string());
    }
    ENTITIES.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entities_and_mojibake() {
        assert_eq!(html_unescape("a &amp;amp; b &#233; &#x41; &unknown; & c"), "a &amp; b é A &unknown; & c");
        assert_eq!(clean_prompt("naÃ¯ve  â€˜quotesâ€™"), "naïve 'quotes'");
        assert_eq!(clean_prompt("café"), "café");
    }
}
