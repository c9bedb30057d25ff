//! The invoices of the fake simPRO: page bodies in simPRO's wire format, generated
//! deterministically or taken from fixed pages, narrowed to the requested `columns`.

use std::fmt::Write as _;

use super::{FakeSimproConfig, Invoices};

/// Top-level invoice fields to send (`columns=`); all by default.
#[derive(Debug, Clone, Copy)]
pub(super) struct Columns(u8);

impl Columns {
    const NAMES: [&'static str; 7] =
        ["ID", "Type", "Customer", "Jobs", "RecurringInvoice", "Total", "IsPaid"];

    /// `ID,Customer` (comma-separated, URL-encoded commas accepted); unknown names are ignored.
    pub(super) fn parse(list: &str) -> Self {
        let list = list.replace("%2C", ",").replace("%2c", ",");
        let mut bits = 0u8;
        for name in list.split(',').map(str::trim) {
            if let Some(i) = Self::NAMES.iter().position(|n| n.eq_ignore_ascii_case(name)) {
                bits |= 1 << i;
            }
        }
        if bits == 0 { Self::default() } else { Self(bits) }
    }

    fn has(self, name: &str) -> bool {
        Self::NAMES.iter().position(|n| *n == name).is_some_and(|i| self.0 & (1 << i) != 0)
    }
}

impl Default for Columns {
    fn default() -> Self {
        Self(u8::MAX)
    }
}

/// The body of `page`, with `Result-Total` and `Result-Pages`.
pub(super) fn page_body(
    config: &FakeSimproConfig,
    page: u64,
    page_size: u64,
    columns: Columns,
) -> (String, u64, u64) {
    match &config.invoices {
        Invoices::Pages { bodies, total } => {
            let index = usize::try_from(page - 1).unwrap_or(usize::MAX);
            let body = bodies.get(index).cloned().unwrap_or_else(|| "[]".to_owned());
            (body, *total, bodies.len() as u64)
        }
        Invoices::Generated { invoices, customers } => {
            let pages = invoices.div_ceil(page_size);
            let start = (page - 1).saturating_mul(page_size).min(*invoices);
            let end = (start + page_size).min(*invoices);
            let mut body = String::with_capacity(((end - start) as usize) * 420 + 2);
            body.push('[');
            for index in start..end {
                if index > start {
                    body.push(',');
                }
                write_invoice(&mut body, index, *customers, columns);
            }
            body.push(']');
            (body, *invoices, pages)
        }
    }
}

/// Customer of the invoice at 0-based `index`: a stride walk over `1..=customers` that visits
/// every customer once in the first `customers` invoices (the stride is coprime with the count),
/// so repeats are spread over all pages rather than bunched.
pub fn customer_of(index: u64, customers: u64) -> u64 {
    const STRIDE: u64 = 7919;
    let customers = customers.max(1);
    let stride = if customers.is_multiple_of(STRIDE) { 1 } else { STRIDE };
    1 + (index.wrapping_mul(stride)) % customers
}

fn write_invoice(out: &mut String, index: u64, customers: u64, columns: Columns) {
    let customer = customer_of(index, customers);
    let id = 100_000 + index;
    let cents = 10_000 + (index * 37) % 90_000;
    let (ex, tax) = (cents as f64 / 100.0, cents as f64 / 1000.0);
    let inc = ex + tax;
    let recurring = index % 10 == 9;
    let paid = index.is_multiple_of(3);
    out.push('{');
    let mut first = true;
    let mut field = |out: &mut String, name: &str| {
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, r#""{name}":"#);
    };
    if columns.has("ID") {
        field(out, "ID");
        let _ = write!(out, "{id}");
    }
    if columns.has("Type") {
        field(out, "Type");
        let kind = if !recurring && index % 7 == 3 { "Deposit" } else { "TaxInvoice" };
        let _ = write!(out, r#""{kind}""#);
    }
    if columns.has("Customer") {
        field(out, "Customer");
        // Odd customers are companies, even ones individuals, as in the fixtures.
        let _ = if customer % 2 == 1 {
            write!(
                out,
                r#"{{"ID":{customer},"CompanyName":"Customer {customer} Pty Ltd","GivenName":"","FamilyName":""}}"#
            )
        } else {
            write!(
                out,
                r#"{{"ID":{customer},"CompanyName":"","GivenName":"Given{customer}","FamilyName":"Family{customer}"}}"#
            )
        };
    }
    if columns.has("Jobs") {
        field(out, "Jobs");
        let _ = if recurring {
            write!(out, "[]")
        } else {
            write!(
                out,
                r#"[{{"ID":{},"Description":"Job {index}","Total":{{"ExTax":{ex:.2},"Tax":{tax:.2},"IncTax":{inc:.2}}}}}]"#,
                5000 + index
            )
        };
    }
    if columns.has("RecurringInvoice") {
        field(out, "RecurringInvoice");
        let _ = if recurring {
            write!(
                out,
                r#"{{"ID":{},"Description":"Monthly service","Total":{{"ExTax":{ex:.2},"Tax":{tax:.2},"IncTax":{inc:.2}}}}}"#,
                7000 + index % 100
            )
        } else {
            write!(out, "null")
        };
    }
    if columns.has("Total") {
        field(out, "Total");
        let _ = write!(
            out,
            r#"{{"ExTax":{ex:.2},"IncTax":{inc:.2},"Tax":{tax:.2},"ReverseChargeTax":0.0,"AmountApplied":{applied:.2},"BalanceDue":{due:.2}}}"#,
            applied = if paid { inc } else { 0.0 },
            due = if paid { 0.0 } else { inc },
        );
    }
    if columns.has("IsPaid") {
        field(out, "IsPaid");
        let _ = write!(out, "{paid}");
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn columns_limit_the_fields_of_generated_invoices() {
        let config = FakeSimproConfig::generated(3, 2);
        let (all, _, _) = page_body(&config, 1, 250, Columns::default());
        let (narrow, total, pages) = page_body(&config, 1, 250, Columns::parse("ID,Customer"));
        let narrow: serde_json::Value = serde_json::from_str(&narrow).unwrap();
        let all: serde_json::Value = serde_json::from_str(&all).unwrap();
        assert_eq!((total, pages), (3, 1));
        assert_eq!(narrow[0].as_object().unwrap().len(), 2);
        assert_eq!(narrow[0]["Customer"], all[0]["Customer"]);
        assert_eq!(narrow[1]["ID"], all[1]["ID"]);
        assert_eq!(all[0].as_object().unwrap().len(), 7);
    }

    #[test]
    fn the_stride_walk_visits_every_customer_in_the_first_m_invoices() {
        let customers = 37_123;
        let seen: std::collections::HashSet<u64> =
            (0..customers).map(|i| customer_of(i, customers)).collect();
        assert_eq!(seen.len() as u64, customers);
        assert!(seen.iter().all(|c| (1..=customers).contains(c)));
    }
}
