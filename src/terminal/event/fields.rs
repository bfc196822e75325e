//! Field-by-field reading of a sanitized JSON object into the event types.
//!
//! Each accessor knows the field's name, so every error says exactly which field is missing or
//! malformed, including inside receipt items (`items[1].quantity`).

use serde_json::{Map, Value};

use super::super::pci;
use super::{EventError, TerminalEvent};
use crate::manager::{ApprovalRequest, Pin};
use crate::refund::draft::LineRequest;
use crate::sale::{ItemTaxInput, LineItemInput, SaleInput};

/// Longest event type echoed in an `unknown_type` error, so a hostile terminal cannot make the
/// daemon log or reply with kilobytes of its own text.
const MAX_ECHOED_TYPE: usize = 64;

/// Reads the optional `seq`, which must be an integer when present.
pub(super) fn seq(map: &Map<String, Value>) -> Result<Option<i64>, EventError> {
    let fields = Fields { map, prefix: None };
    match fields.get("seq") {
        None => Ok(None),
        Some(value) => value.as_i64().map(Some).ok_or_else(|| fields.invalid("seq", "expected an integer")),
    }
}

/// Builds the event named by `type` from the object's fields.
pub(super) fn event_from_object(map: &Map<String, Value>) -> Result<TerminalEvent, EventError> {
    let f = Fields { map, prefix: None };
    let kind = match f.get("type") {
        None => return Err(f.missing("type")),
        Some(Value::String(kind)) => kind.as_str(),
        Some(_) => return Err(f.invalid("type", "expected a string")),
    };
    match kind {
        "receipt" => receipt(&f).map(TerminalEvent::Receipt),
        "receipt_scan" => Ok(TerminalEvent::ReceiptScan { receipt_id: f.required("receipt_id")? }),
        "card" => Ok(TerminalEvent::Card {
            masked_pan: f.masked_pan("masked_pan")?.ok_or_else(|| f.missing("masked_pan"))?,
            expiry: f.optional("expiry")?,
            entry_mode: f.optional("entry_mode")?,
        }),
        "refund" => Ok(TerminalEvent::Refund {
            receipt_id: f.optional("receipt_id")?,
            original_transaction_id: f.optional("original_transaction_id")?,
            // Absent with `lines`; present, it must be a decimal string with more than spaces.
            amount: f.get("amount").map(|_| f.amount("amount")).transpose()?,
            lines: refund_lines(&f, "lines")?,
            reason: f.required("reason")?,
            operator: f.required("operator")?,
            currency: f.optional("currency")?,
            manager_approval: f.approval("manager_approval")?,
            request_id: f.optional("request_id")?,
        }),
        "cancel" => Ok(TerminalEvent::Cancel),
        other => {
            // Cutting a long digit run short could expose a Luhn-valid prefix, so mask again.
            let shown: String = other.chars().take(MAX_ECHOED_TYPE).collect();
            Err(EventError::UnknownType(pci::mask_text(&shown).into_owned()))
        }
    }
}

fn receipt(f: &Fields<'_>) -> Result<SaleInput, EventError> {
    Ok(SaleInput {
        receipt_id: f.required("receipt_id")?,
        transaction_id: f.required("transaction_id")?,
        order_id: f.optional("order_id")?,
        session_id: f.optional("session_id")?,
        currency: f.required("currency")?,
        total: f.amount("total")?,
        subtotal: f.amount("subtotal")?,
        tax: f.optional_amount("tax")?,
        discount: f.optional_amount("discount")?,
        payment_method: f.optional("payment_method")?,
        processor: f.optional("processor")?,
        processor_payment_id: f.optional("processor_payment_id")?,
        masked_pan: f.masked_pan("masked_pan")?,
        captured_at: f.optional("captured_at")?,
        items: items(f)?,
    })
}

fn items(f: &Fields<'_>) -> Result<Vec<LineItemInput>, EventError> {
    let list = match f.get("items") {
        None => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(f.invalid("items", "expected an array")),
    };
    list.iter()
        .enumerate()
        .map(|(index, value)| {
            let name = f.name(&format!("items[{index}]"));
            let Value::Object(map) = value else {
                return Err(EventError::InvalidField { field: name, reason: "expected an object" });
            };
            let item = Fields { map, prefix: Some(name) };
            Ok(LineItemInput {
                line: item.optional_quantity("line")?,
                name: item.required("name")?,
                quantity: item.quantity("quantity")?,
                price: item.amount("price")?,
                total: item.amount("total")?,
                product_id: item.required("product_id")?,
                variant_id: item.required("variant_id")?,
                sku: item.optional("sku")?,
                tax: item.optional_amount("tax")?,
                discount: item.optional_amount("discount")?,
                taxes: taxes(&item)?,
            })
        })
        .collect()
}

/// A line's `taxes`: `[{name, amount, percentage}]`, amounts as decimal strings.
fn taxes(f: &Fields<'_>) -> Result<Vec<ItemTaxInput>, EventError> {
    let list = match f.get("taxes") {
        None => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(f.invalid("taxes", "expected an array")),
    };
    list.iter()
        .enumerate()
        .map(|(index, value)| {
            let name = f.name(&format!("taxes[{index}]"));
            let Value::Object(map) = value else {
                return Err(EventError::InvalidField { field: name, reason: "expected an object" });
            };
            let tax = Fields { map, prefix: Some(name) };
            Ok(ItemTaxInput {
                name: tax.required("name")?,
                amount: tax.amount("amount")?,
                percentage: tax.optional_amount("percentage")?,
            })
        })
        .collect()
}

/// A list of `{line, quantity}` objects naming what an itemized refund returns.
fn refund_lines(f: &Fields<'_>, field: &str) -> Result<Vec<LineRequest>, EventError> {
    let list = match f.get(field) {
        None => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(f.invalid(field, "expected an array of {\"line\", \"quantity\"}")),
    };
    list.iter()
        .enumerate()
        .map(|(index, value)| {
            let name = f.name(&format!("{field}[{index}]"));
            let Value::Object(map) = value else {
                return Err(EventError::InvalidField { field: name, reason: "expected an object" });
            };
            let entry = Fields { map, prefix: Some(name) };
            if map.keys().any(|k| k != "line" && k != "quantity") {
                return Err(entry.invalid("line", "only `line` and `quantity` are allowed"));
            }
            Ok(LineRequest { line: entry.quantity("line")?, quantity: entry.quantity("quantity")? })
        })
        .collect()
}

/// A view of one JSON object; `prefix` names the object for nested error messages.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    prefix: Option<String>,
}

impl Fields<'_> {
    fn name(&self, field: &str) -> String {
        match &self.prefix {
            Some(prefix) => format!("{prefix}.{field}"),
            None => field.to_owned(),
        }
    }

    fn missing(&self, field: &str) -> EventError {
        EventError::MissingField { field: self.name(field) }
    }

    fn invalid(&self, field: &str, reason: &'static str) -> EventError {
        EventError::InvalidField { field: self.name(field), reason }
    }

    /// The field's value; JSON `null` counts as absent because terminals use both.
    fn get(&self, field: &str) -> Option<&Value> {
        self.map.get(field).filter(|value| !value.is_null())
    }

    /// An optional string; an empty string counts as absent, as terminals send `""` for "none".
    fn optional(&self, field: &str) -> Result<Option<String>, EventError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(text)) if text.is_empty() => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(_) => Err(self.invalid(field, "expected a string")),
        }
    }

    /// A manager approval: an object with the strings `manager` and `pin`. A plain string (an
    /// id alone) is refused: it is never an approval.
    fn approval(&self, field: &str) -> Result<Option<ApprovalRequest>, EventError> {
        const SHAPE: &str =
            "expected an object {\"manager\", \"pin\"}; a manager id alone is not an approval";
        let Some(value) = self.get(field) else {
            return Ok(None);
        };
        let Value::Object(map) = value else {
            return Err(self.invalid(field, SHAPE));
        };
        let inner = Fields { map, prefix: Some(self.name(field)) };
        if map.keys().any(|k| k != "manager" && k != "pin") {
            return Err(self.invalid(field, SHAPE));
        }
        Ok(Some(ApprovalRequest {
            manager: inner.required("manager")?,
            pin: Pin::new(inner.required("pin")?),
        }))
    }

    /// A required string that must contain more than whitespace.
    fn required(&self, field: &str) -> Result<String, EventError> {
        match self.get(field) {
            None => Err(self.missing(field)),
            Some(Value::String(text)) if text.trim().is_empty() => {
                Err(self.invalid(field, "must not be empty"))
            }
            Some(Value::String(text)) => Ok(text.clone()),
            Some(_) => Err(self.invalid(field, "expected a string")),
        }
    }

    /// A money amount. JSON numbers are refused: they would pass through a binary float and could
    /// silently change the amount, so the terminal must send the decimal text it printed.
    fn optional_amount(&self, field: &str) -> Result<Option<String>, EventError> {
        match self.get(field) {
            Some(Value::Number(_)) => Err(self.invalid(field, "expected a decimal string")),
            _ => self.optional(field),
        }
    }

    fn amount(&self, field: &str) -> Result<String, EventError> {
        match self.get(field) {
            Some(Value::Number(_)) => Err(self.invalid(field, "expected a decimal string")),
            _ => self.required(field),
        }
    }

    fn optional_quantity(&self, field: &str) -> Result<Option<u32>, EventError> {
        self.get(field).map(|_| self.quantity(field)).transpose()
    }

    fn quantity(&self, field: &str) -> Result<u32, EventError> {
        let value = self.get(field).ok_or_else(|| self.missing(field))?;
        value
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| self.invalid(field, "expected a non-negative integer"))
    }

    /// An optional masked PAN. The sanitizer already masked any full PAN; this checks the shape so
    /// that the domain layer can rely on `last4` succeeding.
    fn masked_pan(&self, field: &str) -> Result<Option<String>, EventError> {
        let masked = self.optional(field)?;
        match &masked {
            Some(text) if pci::last4(text).is_none() => {
                Err(self.invalid(field, "expected a masked card number ending in four digits"))
            }
            _ => Ok(masked),
        }
    }
}
