//! The real-time intake's input: the invoices a webhook forwarder posts, reduced to the distinct
//! customer ids they name.

use std::collections::HashSet;

use serde::Deserialize;
use utoipa::ToSchema;

/// One invoice as simPRO lists it (`GET …/invoices/` rows, or what a webhook forwarder fetched);
/// only the ids are read, every other field is ignored (so the schema allows any others).
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct InvoiceRef {
    #[serde(rename = "ID")]
    pub id: u64,
    /// Absent or `null` on invoices without a customer.
    #[serde(rename = "Customer", default)]
    pub customer: Option<CustomerRef>,
}

/// `Customer` of an invoice row.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CustomerRef {
    #[serde(rename = "ID")]
    pub id: u64,
}

/// Body of `POST /internal/simpro/invoices`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct IntakeBody {
    /// At most `realtime.max_batch` rows (default 1000; more answer 422, not 400, so the
    /// configurable limit is not a schema constraint). An empty list is accepted.
    pub invoices: Vec<InvoiceRef>,
}

impl IntakeBody {
    /// The distinct customer ids of the batch.
    pub fn customer_ids(&self) -> Vec<u64> {
        let ids: HashSet<u64> =
            self.invoices.iter().filter_map(|i| i.customer.as_ref().map(|c| c.id)).collect();
        let mut ids: Vec<u64> = ids.into_iter().collect();
        ids.sort_unstable();
        ids
    }
}
