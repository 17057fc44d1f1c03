//! Reading `Retry-After` (RFC 9110 section 10.2.3): delay-seconds or an HTTP-date.

use std::time::{Duration, SystemTime};

use http::{header, HeaderMap};

/// How long the server asked the client to wait, if it asked in a form we can read. A date in
/// the past is no wait; a malformed or repeated value is ignored (the backoff applies).
pub(crate) fn parse(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let mut values = headers.get_all(header::RETRY_AFTER).iter();
    let value = values.next()?.to_str().ok()?.trim();
    if values.next().is_some() {
        return None;
    }
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than a u64 holds is still "a very long time": the cap applies.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&'static str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(header::RETRY_AFTER, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn reads_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        let secs = |s| parse(&headers(&[s]), now);
        assert_eq!(secs("3"), Some(Duration::from_secs(3)));
        assert_eq!(secs(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            secs("99999999999999999999999"),
            Some(Duration::from_secs(u64::MAX))
        );
        // IMF-fixdate, and the two obsolete forms recipients must accept.
        assert_eq!(
            secs("Sun, 06 Nov 1994 08:50:07 GMT"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            secs("Sunday, 06-Nov-94 08:49:47 GMT"),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            secs("Sun Nov  6 08:49:39 1994"),
            Some(Duration::from_secs(2))
        );
        assert_eq!(secs("Sun, 06 Nov 1994 08:00:00 GMT"), Some(Duration::ZERO));
    }

    #[test]
    fn ignores_what_it_cannot_read() {
        let now = SystemTime::now();
        for bad in ["", "-1", "1.5", "soon", "3 s"] {
            assert_eq!(parse(&headers(&[bad]), now), None, "{bad:?}");
        }
        assert_eq!(parse(&headers(&[]), now), None);
        assert_eq!(parse(&headers(&["1", "2"]), now), None);
    }
}
