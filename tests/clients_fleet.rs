//! A keyed set of providers with the fleet store: each client's provider
//! over its own `SharedCache`, so that each client shares its own token
//! across the replicas of a fleet (an in-memory store, paused time).

use std::convert::Infallible;
use std::time::Duration;

use routera_auth::clients::{CredentialSource, TokenProviders};
use routera_auth::store::SharedCache;
use routera_auth::{AuthMethod, ClientCredentials, TokenProvider};
use routera_auth_test::{MemoryStore, MockExchange};
use tokio::task::JoinSet;

const HOUR: Duration = Duration::from_secs(3600);
const URL: &str = "https://auth.routera.test/oauth2/token";

/// One replica's set: each client's provider over a `SharedCache` of its
/// own on the fleet's store.
fn replica(store: &MemoryStore, exchange: &MockExchange) -> TokenProviders<u32> {
    let source = CredentialSource::from_fn(|tenant: u32| async move {
        Ok::<_, Infallible>(ClientCredentials::new(
            format!("tenant-{tenant}"),
            format!("secret-{tenant}"),
        ))
    });
    let (store, exchange) = (store.clone(), exchange.clone());
    TokenProviders::builder_with(source, move |_tenant, credentials| {
        let shared = SharedCache::new(store.clone(), URL, AuthMethod::RequestBody);
        let exchange = tower::ServiceBuilder::new()
            .layer(shared)
            .service(exchange.clone());
        TokenProvider::new(exchange, credentials)
    })
    .build()
}

#[tokio::test(start_paused = true)]
async fn each_client_shares_its_own_token_across_the_fleet() {
    let store = MemoryStore::new();
    let exchange = MockExchange::new(HOUR).with_delay(Duration::from_millis(50));
    let replicas: Vec<_> = (0..4).map(|_| replica(&store, &exchange)).collect();

    let mut asks = JoinSet::new();
    for (r, replica) in replicas.iter().enumerate() {
        for tenant in 0..3u32 {
            let replica = replica.clone();
            asks.spawn(async move {
                let provider = replica.provider(&tenant).await.unwrap();
                (
                    r,
                    tenant,
                    provider.token().await.unwrap().secret().to_owned(),
                )
            });
        }
    }
    let mut tokens = vec![Vec::new(); 3];
    while let Some(joined) = asks.join_next().await {
        let (_, tenant, token) = joined.unwrap();
        tokens[tenant as usize].push(token);
    }

    assert_eq!(
        exchange.calls(),
        3,
        "one exchange per client for the whole fleet"
    );
    let seen = exchange.credentials_seen();
    for (tenant, tokens) in tokens.iter().enumerate() {
        assert_eq!(tokens.len(), 4);
        assert!(tokens.iter().all(|token| token == &tokens[0]), "{tokens:?}");
        // The token is the one issued to this tenant's credentials.
        let n: usize = tokens[0].trim_start_matches("token-").parse().unwrap();
        assert_eq!(seen[n - 1].client_id(), format!("tenant-{tenant}"));
    }
    assert_eq!(store.tokens().len(), 3, "one entry per client");
    // No secret and no token in the store's names.
    for (name, _) in store.tokens() {
        assert!(!name.contains("secret-"), "{name}");
        assert!(!name.contains("token-"), "{name}");
    }
}
