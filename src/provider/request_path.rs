//! What a request reads of a provider: its own [`TokenView`] of the current
//! token, the `Authorization` header of a token that may be served (and
//! the refresh a due token asks for), and the [`TokenTag`] that lets a
//! response rejecting that token invalidate exactly it.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use tokio::time::Instant;

use super::cached::CachedToken;
use super::worker::Message;
use super::{BoxFuture, Shared, TokenProvider, lock};
use crate::error::TokenError;

/// A request path's own view of a provider's current token (not a cache
/// of tokens, such as the fleet's `SharedCache`): it holds the
/// token and checks on each use, with one plain load, whether the provider
/// replaced it. No reference count moves while the token stays the same.
pub(crate) type TokenView = arc_swap::Cache<CurrentSlot, Option<Arc<CachedToken>>>;

/// The current-token slot of a provider, as a [`TokenView`] reads it.
#[derive(Clone)]
pub(crate) struct CurrentSlot(Arc<Shared>);

impl Deref for CurrentSlot {
    type Target = ArcSwapOption<CachedToken>;

    fn deref(&self) -> &Self::Target {
        &self.0.current
    }
}

/// Which token of which provider a request carried, so that a response
/// rejecting it can invalidate exactly that token.
#[derive(Clone)]
pub(crate) struct TokenTag {
    provider: TokenProvider,
    seq: u64,
}

impl TokenTag {
    /// Drops the token this tag names if it is still the current one and
    /// the pacing of invalidations allows it (a 401 from the API). Returns
    /// whether it was dropped.
    pub(crate) fn reject(&self) -> bool {
        let current = self.provider.shared().current.load();
        let Some(cached) = current.as_ref().filter(|cached| cached.seq == self.seq) else {
            return false;
        };
        let now = Instant::now();
        if now < cached.rejectable_from && now < cached.refresh_at {
            // Rejected again soon after the last one (a wrong audience, an
            // API that refuses fresh tokens): keep the token for now rather
            // than fetch one per request. A token whose refresh is due goes
            // at once: no exchange is added.
            // The shared client id: no copy on a path a 401 storm takes.
            let client_id = Arc::clone(lock(&self.provider.shared().live).credentials.label());
            let client_id = &*client_id;
            tracing::debug!(
                client_id,
                "token rejected again soon after the last one; not invalidated yet"
            );
            return false;
        }
        self.provider.drop_token(&current, true)
    }
}

impl TokenProvider {
    /// The `Authorization` header value of the cached token if it may be
    /// served. This is the whole request path when the token is fresh.
    #[inline]
    pub(crate) fn fresh_header(&self, cache: &mut TokenView) -> Option<(HeaderValue, TokenTag)> {
        let cached = cache.load().as_ref()?;
        self.may_serve(cached)
            .then(|| (cached.header.clone(), self.tag(cached)))
    }

    /// The `Authorization` header value of the cached token if it may be
    /// served at `now`, read from the provider's slot without a
    /// [`TokenView`]: the request path of a keyed set of providers.
    #[cfg(feature = "multi-client")]
    #[inline]
    pub(crate) fn fresh_header_at(&self, now: Instant) -> Option<(HeaderValue, TokenTag)> {
        let current = self.shared().current.load();
        let cached = current.as_ref()?;
        self.may_serve_at(cached, now)
            .then(|| (cached.header.clone(), self.tag(cached)))
    }

    /// Whether `cached` may be served now; asks for its refresh if due.
    #[inline]
    pub(super) fn may_serve(&self, cached: &CachedToken) -> bool {
        self.may_serve_at(cached, Instant::now())
    }

    /// Whether `cached` may be served at `now`; asks for its refresh if due.
    #[inline]
    fn may_serve_at(&self, cached: &CachedToken, now: Instant) -> bool {
        if now < cached.refresh_at {
            return true;
        }
        let fresh = cached.is_fresh(now);
        // Asked again after the exchange timeout (its worker may have been
        // lost with its runtime), but never more than once a second.
        let again = self
            .shared()
            .options
            .exchange_timeout
            .max(Duration::from_secs(1));
        if fresh && cached.claim_refresh(now, again) && self.send(Message::RefreshDue).is_err() {
            // No runtime here: let a later request on a runtime ask.
            cached.unclaim_refresh();
        }
        fresh
    }

    /// A [`TokenView`] of this provider's token, for a request path.
    pub(crate) fn token_view(&self) -> TokenView {
        arc_swap::Cache::new(CurrentSlot(Arc::clone(&self.handles.shared)))
    }

    /// The `Authorization` header value of a fresh token, fetching one if
    /// needed.
    pub(crate) fn header<E: From<TokenError> + Send + 'static>(
        &self,
    ) -> BoxFuture<Result<(HeaderValue, TokenTag), E>> {
        let provider = self.clone();
        Box::pin(async move {
            let cached = provider.wait(false).await?;
            Ok((cached.header.clone(), provider.tag(&cached)))
        })
    }

    fn tag(&self, cached: &CachedToken) -> TokenTag {
        TokenTag {
            provider: self.clone(),
            seq: cached.seq,
        }
    }
}
