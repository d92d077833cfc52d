//! Property tests: the response parser never panics, and Basic client
//! authentication round-trips through RFC 6749 §2.3.1 decoding.

mod common;

use base64::Engine as _;
use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use proptest::prelude::*;
use routera_auth::{AuthMethod, ClientCredentials, Token, TokenError, TokenRequest};

/// The result of an exchange whose HTTP client (a `tower_test` mock)
/// answers `status`, `headers` and `body`. Each case runs on its own
/// current-thread runtime.
fn exchange_answering(
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
) -> Result<Token, TokenError> {
    let mut response = Response::builder().status(status);
    for (name, value) in &headers {
        response = response.header(name.as_str(), value.as_str());
    }
    let body = Bytes::from(body);
    let response = response
        .body(Full::new(body.clone()))
        .unwrap_or_else(|_| Response::new(Full::new(body)));
    let request = TokenRequest::new(ClientCredentials::new("id", "secret"));
    tokio_test::block_on(common::exchange_once(
        |exchange| exchange,
        request,
        Ok(response),
    ))
    .0
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map_or(serde_json::Value::Null, serde_json::Value::Number)),
        ".*".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("access_token".to_owned()),
                    Just("expires_in".to_owned()),
                    Just("token_type".to_owned()),
                    Just("error".to_owned()),
                    Just("error_description".to_owned()),
                    ".{0,8}".prop_map(String::from)
                ],
                inner,
                0..5
            )
            .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_parser_never_panics_on_arbitrary_bytes(
        status in 100u16..1000,
        body in prop::collection::vec(any::<u8>(), 0..2048),
        retry_after in proptest::option::of(".{0,12}"),
    ) {
        let headers = retry_after.map(|value| vec![("retry-after".to_owned(), value)]).unwrap_or_default();
        let result = exchange_answering(status, headers, body);
        if let Err(err) = result {
            // Whatever came back, it displays without panicking.
            let _ = (err.to_string(), format!("{err:?}"), err.is_retryable());
        }
    }

    #[test]
    fn the_parser_never_panics_on_arbitrary_json(status in prop_oneof![Just(200u16), Just(400), Just(401), Just(429), Just(503)], value in json_value()) {
        let body = serde_json::to_vec(&value).unwrap();
        if let Err(err) = exchange_answering(status, Vec::new(), body) {
            let _ = (err.to_string(), format!("{err:?}"));
        }
    }

    #[test]
    fn basic_credentials_round_trip_through_rfc_6749_decoding(id in ".*", secret in ".*") {
        let response = Response::new(Full::new(Bytes::from_static(
            br#"{"access_token":"t","expires_in":60,"token_type":"Bearer"}"#,
        )));
        let request = TokenRequest::new(ClientCredentials::new(id.clone(), secret.clone()));
        let (token, sent) = tokio_test::block_on(common::exchange_once(
            |exchange| exchange.with_auth_method(AuthMethod::BasicAuth),
            request,
            Ok(response),
        ));
        prop_assert!(token.is_ok());

        let header = sent.headers().get(http::header::AUTHORIZATION).expect("an Authorization header");
        prop_assert!(header.is_sensitive());
        let encoded = header.to_str().unwrap().strip_prefix("Basic ").unwrap().to_owned();
        let decoded = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded).unwrap()).unwrap();
        let (encoded_id, encoded_secret) = decoded.split_once(':').expect("one separator");
        let form_decode = |part: &str| -> String {
            form_urlencoded::parse(format!("v={part}").as_bytes())
                .next()
                .map(|(_, value)| value.into_owned())
                .unwrap_or_default()
        };
        prop_assert_eq!(form_decode(encoded_id), id);
        prop_assert_eq!(form_decode(encoded_secret), secret);
    }
}
