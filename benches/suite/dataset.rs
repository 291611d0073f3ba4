//! The benchmark data: items of about 1 KB with several attribute types, in
//! the shape of Redpanda Connect's published `aws_dynamodb_cdc` benchmark,
//! written with BatchWriteItem.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use aws_sdk_dynamodb::Client;

/// One item: a string key, numbers, a boolean, a string set, binary, a map,
/// a list and a text payload, about 1 KB in all. Returns the item and its
/// size in bytes as DynamoDB counts it (names plus values).
pub fn item(table: &str, index: u64) -> (HashMap<String, AttributeValue>, usize) {
    let key = format!("{table}-{index:08}");
    // Text that differs from item to item, so nothing compresses it away.
    let payload: String = (0..700)
        .map(|i| char::from(b'a' + ((index as usize * 7 + i * 13) % 26) as u8))
        .collect();
    let blob: Vec<u8> = (0..96).map(|i| (index as usize + i) as u8).collect();
    let item = HashMap::from([
        ("pk".to_owned(), AttributeValue::S(key.clone())),
        ("seq".to_owned(), AttributeValue::N(index.to_string())),
        (
            "price".to_owned(),
            AttributeValue::N(format!("{}.{:02}", index % 1000, index % 100)),
        ),
        ("active".to_owned(), AttributeValue::Bool(index % 2 == 0)),
        (
            "tags".to_owned(),
            AttributeValue::Ss(vec![
                "bench".into(),
                format!("t{}", index % 10),
                "cdc".into(),
            ]),
        ),
        ("blob".to_owned(), AttributeValue::B(blob.into())),
        (
            "address".to_owned(),
            AttributeValue::M(HashMap::from([
                ("city".to_owned(), AttributeValue::S("Lisbon".into())),
                ("zip".to_owned(), AttributeValue::N("1100".into())),
            ])),
        ),
        (
            "history".to_owned(),
            AttributeValue::L(vec![
                AttributeValue::N("1".into()),
                AttributeValue::S("created".into()),
                AttributeValue::Null(true),
            ]),
        ),
        ("payload".to_owned(), AttributeValue::S(payload)),
    ]);
    let size = item
        .iter()
        .map(|(name, value)| name.len() + value_size(value))
        .sum();
    (item, size)
}

fn value_size(value: &AttributeValue) -> usize {
    match value {
        AttributeValue::S(s) | AttributeValue::N(s) => s.len(),
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Ss(list) | AttributeValue::Ns(list) => list.iter().map(String::len).sum(),
        AttributeValue::M(map) => {
            3 + map
                .iter()
                .map(|(k, v)| k.len() + 1 + value_size(v))
                .sum::<usize>()
        }
        AttributeValue::L(list) => 3 + list.iter().map(|v| 1 + value_size(v)).sum::<usize>(),
        _ => 1,
    }
}

/// Writes `count` items to `table` with BatchWriteItem, `lanes` requests in
/// flight; returns the bytes written.
pub async fn load(client: &Client, table: &str, count: u64, lanes: u64) -> u64 {
    let mut writers = tokio::task::JoinSet::new();
    for lane in 0..lanes {
        let (client, table) = (client.clone(), table.to_owned());
        writers.spawn(async move {
            let mut bytes = 0u64;
            let indexes: Vec<u64> = (lane..count).step_by(lanes as usize).collect();
            for chunk in indexes.chunks(25) {
                let mut requests = Vec::with_capacity(chunk.len());
                for &index in chunk {
                    let (item, size) = item(&table, index);
                    bytes += size as u64;
                    let put = PutRequest::builder()
                        .set_item(Some(item))
                        .build()
                        .expect("put");
                    requests.push(WriteRequest::builder().put_request(put).build());
                }
                while !requests.is_empty() {
                    let answer = client
                        .batch_write_item()
                        .request_items(&table, requests)
                        .send()
                        .await
                        .expect("BatchWriteItem");
                    requests = answer
                        .unprocessed_items
                        .and_then(|mut left| left.remove(&table))
                        .unwrap_or_default();
                }
            }
            bytes
        });
    }
    let mut bytes = 0;
    while let Some(lane) = writers.join_next().await {
        bytes += lane.expect("a writer lane");
    }
    bytes
}
