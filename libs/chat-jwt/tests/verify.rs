//! Verifier behaviour against tokens good and hostile, with static keys and
//! with a JWKS served over real HTTP that rotates.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::routing::get;
use chat_core::UserId;
use chat_jwt::testing::{alg_none_token, claims, foreign_key_token, hs256_token};
use chat_jwt::{DEFAULT_LEEWAY, Jwks, KeyPair, Signer, Verifier, VerifyError};

const ISS: &str = "urn:chat:auth";
const AUD: &str = "chat";

fn alice() -> UserId {
    UserId::parse("u-alice").expect("valid id")
}

fn signer(key: &KeyPair) -> Signer {
    Signer::new(key.clone(), ISS, AUD, Duration::from_secs(900)).expect("signer")
}

fn static_verifier(key: &KeyPair) -> Verifier {
    Verifier::with_jwks(&key.jwks(), ISS, AUD, DEFAULT_LEEWAY)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

#[tokio::test]
async fn an_issued_token_verifies_to_its_claims() {
    let key = KeyPair::generate().expect("key");
    let (token, exp) = signer(&key).issue(&alice(), "Alice").expect("issue");
    let claims = static_verifier(&key).verify(&token).await.expect("valid");
    assert_eq!(claims.user, alice());
    assert_eq!(claims.name, "Alice");
    assert_eq!(claims.exp, exp);
    assert!(exp >= now() + 899 && exp <= now() + 901);
}

#[tokio::test]
async fn an_expired_token_is_rejected_but_leeway_is_honoured() {
    let key = KeyPair::generate().expect("key");
    let s = signer(&key);
    let expired = s
        .issue_with_exp(&alice(), "Alice", now() - 60)
        .expect("issue");
    assert_eq!(
        static_verifier(&key).verify(&expired).await,
        Err(VerifyError::Expired)
    );
    let just_expired = s
        .issue_with_exp(&alice(), "Alice", now() - 1)
        .expect("issue");
    assert!(static_verifier(&key).verify(&just_expired).await.is_ok());
    let strict = Verifier::with_jwks(&key.jwks(), ISS, AUD, Duration::ZERO);
    assert_eq!(
        strict.verify(&just_expired).await,
        Err(VerifyError::Expired)
    );
}

#[tokio::test]
async fn a_token_signed_by_another_key_under_our_kid_is_a_bad_signature() {
    let key = KeyPair::generate().expect("key");
    let forged = foreign_key_token(key.kid(), &claims(ISS, AUD, &alice(), "A", now() + 60));
    assert_eq!(
        static_verifier(&key).verify(&forged).await,
        Err(VerifyError::BadSignature)
    );
}

#[tokio::test]
async fn an_unsigned_alg_none_token_is_refused_for_its_algorithm() {
    let key = KeyPair::generate().expect("key");
    let token = alg_none_token(key.kid(), &claims(ISS, AUD, &alice(), "A", now() + 60));
    assert_eq!(
        static_verifier(&key).verify(&token).await,
        Err(VerifyError::AlgorithmNotAllowed("none".into()))
    );
}

#[tokio::test]
async fn an_hs256_token_keyed_with_the_public_key_is_refused_for_its_algorithm() {
    let key = KeyPair::generate().expect("key");
    let x = key.jwk().x.expect("x");
    let token = hs256_token(
        key.kid(),
        x.as_bytes(),
        &claims(ISS, AUD, &alice(), "A", now() + 60),
    );
    assert_eq!(
        static_verifier(&key).verify(&token).await,
        Err(VerifyError::AlgorithmNotAllowed("HS256".into()))
    );
}

#[tokio::test]
async fn tokens_for_another_audience_or_issuer_are_rejected() {
    let key = KeyPair::generate().expect("key");
    let v = static_verifier(&key);
    let other_aud = Signer::new(key.clone(), ISS, "billing", Duration::from_secs(60))
        .expect("signer")
        .issue(&alice(), "A")
        .expect("issue")
        .0;
    assert_eq!(v.verify(&other_aud).await, Err(VerifyError::WrongAudience));
    let other_iss = Signer::new(key.clone(), "urn:evil", AUD, Duration::from_secs(60))
        .expect("signer")
        .issue(&alice(), "A")
        .expect("issue")
        .0;
    assert_eq!(v.verify(&other_iss).await, Err(VerifyError::WrongIssuer));
}

#[tokio::test]
async fn garbage_and_kidless_tokens_are_malformed() {
    let key = KeyPair::generate().expect("key");
    let v = static_verifier(&key);
    for bad in ["", "abc", "a.b", "a.b.c.d", "!!.e30.sig"] {
        assert!(
            matches!(v.verify(bad).await, Err(VerifyError::Malformed(_))),
            "{bad:?} should be malformed"
        );
    }
    let kidless = format!(
        "{}.{}.c2ln",
        base64_header(r#"{"alg":"EdDSA","typ":"at+jwt"}"#),
        base64_header("{}")
    );
    assert!(matches!(
        v.verify(&kidless).await,
        Err(VerifyError::Malformed(_))
    ));
}

fn base64_header(json: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

#[tokio::test]
async fn a_static_verifier_does_not_know_other_keys() {
    let key = KeyPair::generate().expect("key");
    let other = KeyPair::generate().expect("key");
    let (token, _) = signer(&other).issue(&alice(), "A").expect("issue");
    assert_eq!(
        static_verifier(&key).verify(&token).await,
        Err(VerifyError::UnknownKey(other.kid().to_string()))
    );
}

/// A JWKS endpoint on 127.0.0.1:0 whose keys can change, counting fetches.
struct JwksServer {
    url: String,
    jwks: Arc<Mutex<Jwks>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(initial: Jwks) -> Self {
        let jwks = Arc::new(Mutex::new(initial));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (j, f) = (jwks.clone(), fetches.clone());
        let app = Router::new().route(
            "/.well-known/jwks.json",
            get(move || {
                f.fetch_add(1, Ordering::SeqCst);
                let body = j.lock().expect("lock").clone();
                async move { Json(body) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url: format!("http://{addr}/.well-known/jwks.json"),
            jwks,
            fetches,
        }
    }

    fn publish(&self, jwks: Jwks) {
        *self.jwks.lock().expect("lock") = jwks;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_remote_verifier_fetches_once_and_picks_up_a_rotated_key() {
    let old = KeyPair::generate().expect("key");
    let server = JwksServer::start(old.jwks()).await;
    let v = Verifier::remote(&server.url, ISS, AUD, DEFAULT_LEEWAY)
        .expect("verifier")
        .with_min_refetch_interval(Duration::ZERO);

    let (t_old, _) = signer(&old).issue(&alice(), "A").expect("issue");
    assert!(v.verify(&t_old).await.is_ok());
    assert!(v.verify(&t_old).await.is_ok());
    assert_eq!(server.fetches(), 1, "known kid must come from the cache");

    let new = KeyPair::generate().expect("key");
    server.publish(Jwks {
        keys: vec![new.jwk(), old.jwk()],
    });
    let (t_new, _) = signer(&new).issue(&alice(), "A").expect("issue");
    assert_eq!(v.verify(&t_new).await.map(|c| c.user), Ok(alice()));
    assert_eq!(server.fetches(), 2, "unknown kid triggers one re-fetch");
    assert!(v.verify(&t_old).await.is_ok(), "old key still published");

    server.publish(new.jwks());
    let garbage = foreign_key_token("nope", &claims(ISS, AUD, &alice(), "A", now() + 60));
    assert!(matches!(
        v.verify(&garbage).await,
        Err(VerifyError::UnknownKey(_))
    ));
    assert_eq!(
        v.verify(&t_old).await,
        Err(VerifyError::UnknownKey(old.kid().to_string())),
        "a key dropped from the JWKS is no longer accepted after a re-fetch"
    );
}

#[tokio::test]
async fn unknown_kids_cannot_make_the_verifier_hammer_the_jwks_endpoint() {
    let key = KeyPair::generate().expect("key");
    let server = JwksServer::start(key.jwks()).await;
    let v = Verifier::remote(&server.url, ISS, AUD, DEFAULT_LEEWAY)
        .expect("verifier")
        .with_min_refetch_interval(Duration::from_millis(300));
    for i in 0..20 {
        let t = foreign_key_token(
            &format!("junk{i}"),
            &claims(ISS, AUD, &alice(), "A", now() + 60),
        );
        assert!(matches!(
            v.verify(&t).await,
            Err(VerifyError::UnknownKey(_))
        ));
    }
    assert_eq!(server.fetches(), 1, "twenty junk kids, one fetch");

    // Once the interval has passed, a rotated key is found again.
    let new = KeyPair::generate().expect("key");
    server.publish(new.jwks());
    let (t_new, _) = signer(&new).issue(&alice(), "A").expect("issue");
    chat_testkit::eventually(Duration::from_secs(5), "rotated key accepted", || async {
        v.verify(&t_new).await.ok()
    })
    .await;
    assert!(server.fetches() >= 2);
    assert!(
        server.fetches() <= 3,
        "fetches stay bounded by the interval"
    );
}

#[tokio::test]
async fn an_unreachable_jwks_makes_verification_unavailable() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let v = Verifier::remote(format!("http://{addr}/jwks"), ISS, AUD, DEFAULT_LEEWAY)
        .expect("verifier");
    let key = KeyPair::generate().expect("key");
    let (token, _) = signer(&key).issue(&alice(), "A").expect("issue");
    assert!(matches!(
        v.verify(&token).await,
        Err(VerifyError::Unavailable(_))
    ));
    // Rate limited: the failure is repeated, not retried at once.
    assert!(matches!(
        v.verify(&token).await,
        Err(VerifyError::Unavailable(_))
    ));
}

#[tokio::test]
async fn session_and_scopes_travel_in_the_token() {
    let key = KeyPair::generate().expect("key");
    let grant = chat_jwt::Grant {
        user: alice(),
        name: "Alice".into(),
        session: Some("s-1".into()),
        scopes: vec!["rooms:post".into(), "events:read".into()],
    };
    let (token, _) = signer(&key).issue_grant(&grant).expect("issue");
    let c = static_verifier(&key).verify(&token).await.expect("valid");
    assert_eq!(c.session.as_deref(), Some("s-1"));
    assert_eq!(c.scopes, vec!["rooms:post", "events:read"]);
    let (plain, _) = signer(&key).issue(&alice(), "Alice").expect("issue");
    let c = static_verifier(&key).verify(&plain).await.expect("valid");
    assert_eq!((c.session, c.scopes.len()), (None, 0));
}

#[tokio::test]
async fn a_token_of_another_type_signed_by_our_key_is_not_an_access_token() {
    // An ID token (typ JWT) or any other JWT we might sign must never pass
    // as an access token, even with our signature and valid claims.
    let key = KeyPair::generate().expect("key");
    let body = claims(ISS, AUD, &alice(), "A", now() + 60);
    for typ in ["JWT", "id+jwt", ""] {
        let token = chat_jwt::testing::typed_token(&key, typ, &body);
        assert_eq!(
            static_verifier(&key).verify(&token).await,
            Err(VerifyError::NotAnAccessToken(typ.into())),
            "typ {typ:?}"
        );
    }
    let ok = chat_jwt::testing::typed_token(&key, "at+jwt", &body);
    assert!(static_verifier(&key).verify(&ok).await.is_ok());
}

#[tokio::test]
async fn a_signer_publishes_its_previous_key_so_old_tokens_keep_verifying() {
    let old = KeyPair::generate().expect("key");
    let new = KeyPair::generate().expect("key");
    let (t_old, _) = signer(&old).issue(&alice(), "A").expect("issue");
    let rotated = signer(&new).with_published_keys(vec![old.jwk(), new.jwk()]);
    let jwks = rotated.jwks();
    assert_eq!(jwks.keys.len(), 2, "no key twice");
    assert_eq!(
        jwks.keys[0].kid.as_deref(),
        Some(new.kid()),
        "signing key first"
    );
    let v = Verifier::with_jwks(&jwks, ISS, AUD, DEFAULT_LEEWAY);
    assert!(v.verify(&t_old).await.is_ok());
    let (t_new, _) = rotated.issue(&alice(), "A").expect("issue");
    assert!(v.verify(&t_new).await.is_ok());
}
