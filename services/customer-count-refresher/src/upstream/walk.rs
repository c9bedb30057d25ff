//! The full walk: every invoice page, a bounded number in flight, distinct `Customer.ID`s counted exactly.
//!
//! Page 1 is read first to learn `Result-Pages`; pages 2..=N are then requested with at most
//! `concurrency` in flight (a `FuturesUnordered` refilled as pages land). The walk also stops at an
//! empty page (pages after it are not counted), and when the header is missing it keeps going
//! until an empty or short page. Each page is reduced to its customer ids as it arrives and then
//! dropped, so memory is one id set (about 9–18 bytes per distinct customer, whatever the number of
//! invoices) plus at most `concurrency` pages being parsed. A page set guards the invariant that
//! no page is counted twice, and the end check that none is missing.

use std::collections::HashSet;

/// The id sets of a walk: foldhash instead of SipHash (inserting 1M ids with SipHash was the
/// walker's largest CPU cost); still seeded per process.
pub type IdSet = HashSet<u64, foldhash::fast::RandomState>;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::time::Instant;

use crate::upstream::simpro::{PageData, PageError, SimproClient};

/// The outcome of a complete walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalkResult {
    /// Distinct `Customer.ID`s.
    pub unique_customers: u64,
    /// Invoices counted (all pages).
    pub total_invoices: u64,
    /// Pages counted.
    pub pages: u64,
    /// Retried requests.
    pub retries: u64,
    /// `Result-Total` of page 1, when sent (may differ from `total_invoices` if data changed).
    pub result_total: Option<u64>,
    /// The distinct ids themselves (the real-time mode stages them in Redis).
    pub customer_ids: IdSet,
}

/// Why a walk did not produce a count.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error(transparent)]
    Page(#[from] PageError),
    #[error("the walk did not finish within its deadline of {0:?}")]
    Deadline(Duration),
    #[error("page {0} arrived twice")]
    DuplicatePage(u64),
    #[error("pages 1..={expected} expected but {counted} counted")]
    MissingPages { expected: u64, counted: u64 },
}

/// Walks all pages within `deadline` (the caller also races this future against losing its lock).
#[tracing::instrument(name = "simpro.walk", skip(client), fields(page_size = client.page_size()))]
pub async fn walk_all(
    client: &SimproClient,
    concurrency: usize,
    run_deadline: Duration,
) -> Result<WalkResult, WalkError> {
    let deadline = Instant::now() + run_deadline;
    match tokio::time::timeout_at(deadline, walk_inner(client, concurrency.max(1), deadline)).await
    {
        Ok(result) => result,
        Err(_) => Err(WalkError::Deadline(run_deadline)),
    }
}

/// Accumulates pages into the count.
struct Tally {
    customers: IdSet,
    counted_pages: HashSet<u64>,
    invoices: u64,
}

impl Tally {
    fn absorb(&mut self, page: u64, data: PageData) -> Result<(), WalkError> {
        if !self.counted_pages.insert(page) {
            return Err(WalkError::DuplicatePage(page));
        }
        self.invoices += data.invoices;
        self.customers.extend(data.customer_ids);
        Ok(())
    }
}

async fn walk_inner(
    client: &SimproClient,
    concurrency: usize,
    deadline: Instant,
) -> Result<WalkResult, WalkError> {
    let retries = AtomicU64::new(0);
    let page_size = client.page_size();
    let first = client.fetch_with_retry(1, deadline, &retries).await?;
    let header_known = first.result_pages.is_some();
    let result_total = first.result_total;
    // Last page to count: Result-Pages, else unknown until an empty or short page shows up.
    let mut end = match first.result_pages {
        Some(pages) => pages,
        None if first.invoices < page_size => 1,
        None => u64::MAX,
    };
    let mut tally =
        Tally { customers: IdSet::default(), counted_pages: HashSet::new(), invoices: 0 };
    if first.invoices == 0 {
        end = 0;
    } else {
        tally.absorb(1, first)?;
    }

    let mut next = 2u64;
    let mut in_flight = FuturesUnordered::new();
    let fetch = |page: u64| {
        let retries = &retries;
        async move { (page, client.fetch_with_retry(page, deadline, retries).await) }
    };
    loop {
        while in_flight.len() < concurrency && next <= end {
            in_flight.push(fetch(next));
            next += 1;
        }
        let Some((page, result)) = in_flight.next().await else { break };
        let data = result?;
        if page > end {
            continue; // past an empty page: the walk already stopped there
        }
        if data.invoices == 0 {
            end = page - 1;
            continue;
        }
        if !header_known && data.invoices < page_size {
            end = end.min(page);
        }
        tally.absorb(page, data)?;
    }

    let counted = tally.counted_pages.len() as u64;
    if counted != end {
        return Err(WalkError::MissingPages { expected: end, counted });
    }
    if let Some(total) = result_total
        && total != tally.invoices
    {
        tracing::warn!(
            result_total = total,
            counted = tally.invoices,
            "invoice total changed during the walk"
        );
    }
    Ok(WalkResult {
        unique_customers: tally.customers.len() as u64,
        total_invoices: tally.invoices,
        pages: counted,
        retries: retries.load(Ordering::Relaxed),
        result_total,
        customer_ids: tally.customers,
    })
}
