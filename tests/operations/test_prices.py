"""``snh prices`` (`operations.prices`) against answers in the AWS Price List API's format
(``GetProducts``: ``PriceList`` is a list of JSON documents, one per product, each with its
``product.attributes`` and ``terms.OnDemand.<offer>.priceDimensions.<dimension>``), served
by botocore's own Stubber on a real ``pricing`` client, which also checks every request
against the API's model and the exact filters sent."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import boto3
import pytest
from botocore.stub import Stubber

from hub_config.communities import (
    DEFAULT_INSTANCE_TYPES_PATH,
    load_instance_types,
    load_price_table,
)
from operations import prices


def product(sku: str, unit: str, usd: str, **attributes: str) -> str:
    """One ``PriceList`` item as GetProducts returns it (a JSON string)."""
    offer = f"{sku}.JRTCKXETXF"
    return json.dumps(
        {
            "product": {"productFamily": "Compute Instance", "sku": sku, "attributes": attributes},
            "serviceCode": "AmazonEC2",
            "terms": {
                "OnDemand": {
                    offer: {
                        "offerTermCode": "JRTCKXETXF",
                        "sku": sku,
                        "effectiveDate": "2026-11-01T00:00:00Z",
                        "priceDimensions": {
                            f"{offer}.6YS6EN2CT7": {
                                "unit": unit,
                                "endRange": "Inf",
                                "description": f"${usd} per {unit}",
                                "appliesTo": [],
                                "rateCode": f"{offer}.6YS6EN2CT7",
                                "beginRange": "0",
                                "pricePerUnit": {"USD": usd},
                            }
                        },
                        "termAttributes": {},
                    }
                }
            },
            "version": "20261201000000",
            "publicationDate": "2026-12-01T00:00:00Z",
        }
    )


TABLE = """\
# a small table, with comments that must survive
currency: USD
base_region: us-east-1
prices_as_of: "2024-06-01"
price_source: test
storage_prices: {ebs_gp3_gb_month: 0.08, snapshot_gb_month: 0.05}

instance_types:
  # burstable
  t3.large: {vcpu: 2, memory_gib: 8, arch: x86_64, price_per_hour: 0.0832,
             region_prices: {eu-west-1: 0.0912}}
  m5.large: {vcpu: 2, memory_gib: 8, arch: x86_64, price_per_hour: 0.096}
"""


def expect(stub: Stubber, price_list: list[str], **filters: str) -> None:
    stub.add_response(
        "get_products",
        {"PriceList": price_list, "FormatVersion": "aws_v1"},
        {
            "ServiceCode": "AmazonEC2",
            "Filters": [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in filters.items()],
            "MaxResults": 100,
        },
    )


def instance(name: str, region: str) -> dict[str, str]:
    return {"instanceType": name, "regionCode": region, **prices.INSTANCE_FILTERS}


@pytest.fixture
def client():
    client = boto3.client(
        "pricing", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    with Stubber(client) as stub:
        yield client, stub
        stub.assert_no_pending_responses()


def test_prices_are_fetched_reported_and_written_keeping_the_files_comments(
    client, tmp_path, capsys
) -> None:
    pricing, stub = client
    expect(stub, [product("A1", "Hrs", "0.0835000000")], **instance("t3.large", "us-east-1"))
    expect(stub, [product("A2", "Hrs", "0.0912000000")], **instance("t3.large", "eu-west-1"))
    expect(stub, [product("A3", "Hrs", "0.0960000000")], **instance("m5.large", "us-east-1"))
    expect(
        stub,
        [product("S1", "GB-Mo", "0.0800000000")],
        regionCode="us-east-1",
        **prices.STORAGE_FILTERS["ebs_gp3_gb_month"],
    )
    expect(
        stub,
        [product("S2", "GB-Mo", "0.0500000000")],
        regionCode="us-east-1",
        **prices.STORAGE_FILTERS["snapshot_gb_month"],
    )
    table = tmp_path / "instance_types.yaml"
    table.write_text(TABLE)
    today = dt.date(2026, 12, 7)
    assert prices.main(["--table", str(table), "--write"], client=pricing, today=today) == 0
    out = capsys.readouterr().out
    assert "t3.large us-east-1" in out and "+0.4%" in out
    written = table.read_text()
    assert written == TABLE.replace("0.0832", "0.0835").replace("2024-06-01", "2026-12-07")
    assert load_instance_types(table)["t3.large"].price_per_hour == 0.0835
    assert load_price_table(table).as_of == "2026-12-07"


def test_a_price_aws_does_not_give_is_reported_and_kept(client, tmp_path, capsys) -> None:
    pricing, stub = client
    expect(stub, [], **instance("t3.large", "us-east-1"))
    # two different hourly prices: the filters were not precise enough to trust either
    expect(
        stub,
        [product("B1", "Hrs", "0.09"), product("B2", "Hrs", "0.19")],
        **instance("t3.large", "eu-west-1"),
    )
    expect(stub, [product("B3", "Hrs", "0.096")], **instance("m5.large", "us-east-1"))
    for key in ("ebs_gp3_gb_month", "snapshot_gb_month"):
        expect(
            stub,
            [product("S", "GB-Mo", "0.08" if key.startswith("ebs") else "0.05")],
            regionCode="us-east-1",
            **prices.STORAGE_FILTERS[key],
        )
    table = tmp_path / "instance_types.yaml"
    table.write_text(TABLE)
    assert prices.main(["--table", str(table), "--write"], client=pricing) == 1
    err = capsys.readouterr().err
    assert "t3.large us-east-1, t3.large eu-west-1" in err
    assert "price_per_hour: 0.0832" in table.read_text()  # kept
    assert 'prices_as_of: "2024-06-01"' in table.read_text()  # not dated today: some are old


def test_the_shipped_table_can_be_refreshed(client, tmp_path) -> None:
    """Every type and region of the shipped table is asked for once (the stub refuses any
    request it was not told to expect); without --write nothing changes."""
    pricing, stub = client
    shipped = tmp_path / "instance_types.yaml"
    shutil.copy(DEFAULT_INSTANCE_TYPES_PATH, shipped)
    for name, row in load_instance_types(shipped).items():
        for region in ["us-east-1", *row.region_prices]:
            expect(stub, [product("X", "Hrs", "1.0")], **instance(name, region))
    for key in ("ebs_gp3_gb_month", "snapshot_gb_month"):
        expect(stub, [product("S", "GB-Mo", "0.1")], regionCode="us-east-1",
               **prices.STORAGE_FILTERS[key])  # fmt: skip
    before = shipped.read_text()
    assert prices.main(["--table", str(shipped)], client=pricing) == 0
    assert shipped.read_text() == before
