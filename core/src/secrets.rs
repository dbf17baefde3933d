//! What never appears in output: the password of a PostgreSQL URL (user info or a
//! `password=` parameter) and the values of Kafka properties that hold secrets. Both
//! halves print settings through these helpers, in `Debug`, logs and errors alike.

/// What a hidden value prints as.
pub const MASK: &str = "***";

/// `url` with its password hidden: the user-info password and any `password`
/// query parameter become [`MASK`]. A string that is not a URL (libpq's `key=value`
/// form) has every `password=` value hidden.
pub fn redact_url(url: &str) -> String {
    if let Ok(mut u) = url::Url::parse(url) {
        if u.password().is_some() {
            let _ = u.set_password(Some(MASK));
        }
        if u.query_pairs().any(|(k, _)| k == "password") {
            let pairs: Vec<(String, String)> = u
                .query_pairs()
                .map(|(k, v)| {
                    let v = if k == "password" {
                        MASK.into()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            u.query_pairs_mut().clear().extend_pairs(pairs);
        }
        return u.to_string();
    }
    // A URL the `url` crate cannot parse that tokio-postgres may still accept (several
    // hosts, a password with an unencoded `/`, `?`, `#` or `:`): hide all user info.
    for scheme in ["postgres://", "postgresql://"] {
        if let Some(rest) = url.strip_prefix(scheme) {
            return match rest.rfind('@') {
                Some(at) => format!("{scheme}{MASK}@{}", redact_kv(&rest[at + 1..])),
                None => redact_kv(url),
            };
        }
    }
    redact_kv(url)
}

/// libpq's `key=value` form, and anything else: every `password=` value hidden.
fn redact_kv(url: &str) -> String {
    // key=value form: hide the value after every `password=`, quoted or not.
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(at) = rest.find("password") {
        let (before, after) = rest.split_at(at + "password".len());
        out.push_str(before);
        let trimmed = after.trim_start();
        match trimmed.strip_prefix('=') {
            Some(value) => {
                out.push('=');
                out.push_str(MASK);
                let value = value.trim_start();
                let end = if let Some(quoted) = value.strip_prefix('\'') {
                    quoted.find('\'').map_or(value.len(), |i| i + 2)
                } else {
                    value.find(char::is_whitespace).unwrap_or(value.len())
                };
                rest = &value[end..];
            }
            None => rest = after,
        }
    }
    out.push_str(rest);
    out
}

/// Whether a librdkafka property holds a secret: any `*password*` or `*secret*`
/// property, a PEM private key given inline, and the JAAS and OAUTHBEARER
/// configuration strings, which embed credentials.
pub fn is_secret_property(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password")
        || key.contains("secret")
        || key == "ssl.key.pem"
        || key == "sasl.jaas.config"
        || key == "sasl.oauthbearer.config"
}

/// Kafka properties as they may be shown (in `Debug` output, logs): secret values
/// are [`MASK`].
pub fn shown_properties<'a>(
    props: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<(&'a str, &'a str)> {
    props
        .into_iter()
        .map(|(k, v)| (k, if is_secret_property(k) { MASK } else { v }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_hidden_in_every_place_libpq_reads_them() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/shop?sslmode=require"),
            "postgres://app:***@db:5432/shop?sslmode=require"
        );
        let q = redact_url("postgres://app@db/shop?password=s3cret&sslmode=require");
        assert!(!q.contains("s3cret"), "{q}");
        assert!(q.contains("sslmode=require"), "{q}");
        for odd in [
            "postgres://app:s3cret@h1:5432,h2:5432/db",
            "postgres://app:s3/cr?et@db/shop",
            "postgresql://app:s3cret@h1,h2/db?password=s3cret",
        ] {
            let shown = redact_url(odd);
            assert!(!shown.contains("s3"), "{odd} shows as {shown}");
        }
        let kv = redact_url("host=db password = 's3 cret' user=app");
        assert!(!kv.contains("s3"), "{kv}");
        assert!(kv.contains("user=app"), "{kv}");
        assert_eq!(redact_url("host=db password=x"), "host=db password=***");
    }

    #[test]
    fn secret_properties_are_masked() {
        let props = [
            ("sasl.username", "me"),
            ("sasl.password", "s3cret"),
            ("ssl.key.password", "k3y"),
        ];
        let shown = format!("{:?}", shown_properties(props));
        assert!(shown.contains("me") && !shown.contains("s3cret") && !shown.contains("k3y"));
    }
}
