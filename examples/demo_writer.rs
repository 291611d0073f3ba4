//! Creates the demo table and writes an INSERT, a MODIFY and a REMOVE, the
//! three changes a Lambda handler branches on. Used by `scripts/demo`.
//!
//! Run: `cargo run --example demo_writer -- create <table>` then
//! `cargo run --example demo_writer -- write <table>`, with `AWS_ENDPOINT_URL`
//! and `AWS_REGION` set (the demo script sets them for DynamoDB Local).

use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, StreamSpecification, StreamViewType,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, table) = match args.as_slice() {
        [command, table] => (command.as_str(), table.as_str()),
        _ => anyhow::bail!("usage: demo_writer create|write <table>"),
    };
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let client = aws_sdk_dynamodb::Client::new(&config);
    match command {
        "create" => {
            let created = client
                .create_table()
                .table_name(table)
                .attribute_definitions(
                    AttributeDefinition::builder()
                        .attribute_name("pk")
                        .attribute_type(ScalarAttributeType::S)
                        .build()?,
                )
                .key_schema(
                    KeySchemaElement::builder()
                        .attribute_name("pk")
                        .key_type(KeyType::Hash)
                        .build()?,
                )
                .billing_mode(BillingMode::PayPerRequest)
                .stream_specification(
                    StreamSpecification::builder()
                        .stream_enabled(true)
                        .stream_view_type(StreamViewType::NewAndOldImages)
                        .build()?,
                )
                .send()
                .await;
            match created {
                Ok(_) => eprintln!("created table {table} with a NEW_AND_OLD_IMAGES stream"),
                Err(err)
                    if aws_sdk_dynamodb::error::ProvideErrorMetadata::code(&err)
                        == Some("ResourceInUseException") =>
                {
                    eprintln!("table {table} exists")
                }
                Err(err) => return Err(err.into()),
            }
        }
        "write" => {
            let order = |status: &str| {
                [
                    ("pk", AttributeValue::S("order-1001".into())),
                    ("status", AttributeValue::S(status.into())),
                    ("total", AttributeValue::N("42.50".into())),
                    (
                        "items",
                        AttributeValue::L(vec![AttributeValue::S("book".into())]),
                    ),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect::<std::collections::HashMap<_, _>>()
            };
            client
                .put_item()
                .table_name(table)
                .set_item(Some(order("placed")))
                .send()
                .await?;
            eprintln!("wrote INSERT  order-1001 status=placed");
            tokio::time::sleep(Duration::from_millis(300)).await;
            client
                .put_item()
                .table_name(table)
                .set_item(Some(order("shipped")))
                .send()
                .await?;
            eprintln!("wrote MODIFY  order-1001 status=shipped");
            tokio::time::sleep(Duration::from_millis(300)).await;
            client
                .delete_item()
                .table_name(table)
                .key("pk", AttributeValue::S("order-1001".into()))
                .send()
                .await?;
            eprintln!("wrote REMOVE  order-1001");
        }
        other => anyhow::bail!("unknown command {other:?}: expected create or write"),
    }
    Ok(())
}
