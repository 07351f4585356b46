"""``snh prices``: refresh the instance-type table's prices from the AWS Price List API.

    snh prices [--table hub_config/instance_types.yaml] [--write] [--endpoint-url URL]

What is asked (boto3 ``pricing``, ``GetProducts`` on service ``AmazonEC2``, in us-east-1,
one of the API's own regions): for each instance type of the table and each region it is
priced in (the table's ``base_region`` and every ``region_prices`` region), the on-demand
hourly price of Linux, shared tenancy, no pre-installed software, capacity status ``Used``
(the filters the AWS Price List documentation gives for the price a plain instance is billed
at); and the gp3 and snapshot storage prices per GB-month in the base region. The answer's
``PriceList`` items are JSON documents (``product``, ``terms.OnDemand.<offer>.
priceDimensions.<dimension>.pricePerUnit.USD`` with ``unit`` ``Hrs`` or ``GB-Mo``).

Without ``--write`` it prints the table's price, AWS's and the change; with ``--write`` it
rewrites those numbers and ``prices_as_of`` in the file, line by line, so its comments and
layout stay. A price AWS does not return is reported and left as it is (exit status 1).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import yaml

from hub_config.communities import DEFAULT_INSTANCE_TYPES_PATH, load_instance_types

#: The Price List API answers in us-east-1 (also eu-central-1 and ap-south-1).
PRICING_REGION = "us-east-1"
INSTANCE_FILTERS = {
    "operatingSystem": "Linux",
    "tenancy": "Shared",
    "preInstalledSw": "NA",
    "capacitystatus": "Used",
    "licenseModel": "No License required",
}
STORAGE_FILTERS = {
    "ebs_gp3_gb_month": {"productFamily": "Storage", "volumeApiName": "gp3"},
    "snapshot_gb_month": {"productFamily": "Storage Snapshot", "usagetype": "EBS:SnapshotUsage"},
}


@dataclass(frozen=True)
class Quote:
    """One price the table holds and what AWS says now (None: AWS returned none)."""

    key: str  # "t3.large us-east-1" or "ebs_gp3_gb_month"
    table: float
    aws: float | None


def _filters(**values: str) -> list[dict[str, str]]:
    return [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in values.items()]


def on_demand_price(price_list: Iterable[str], unit: str) -> float | None:
    """The USD price per ``unit`` in a ``GetProducts`` answer's ``PriceList``: the single
    on-demand price dimension in that unit (None when there is none, or several that
    differ: the filters were not precise enough to trust one)."""
    found = set()
    for item in price_list:
        document = json.loads(item) if isinstance(item, str) else item
        for offer in (document.get("terms", {}).get("OnDemand") or {}).values():
            for dimension in (offer.get("priceDimensions") or {}).values():
                usd = (dimension.get("pricePerUnit") or {}).get("USD")
                if dimension.get("unit") == unit and usd not in (None, ""):
                    found.add(float(usd))
    found.discard(0.0)  # AWS lists $0 dimensions for some reservations' usage
    return found.pop() if len(found) == 1 else None


def fetch(client: Any, table: dict[str, Any]) -> list[Quote]:
    """AWS's prices for everything the table prices (``table``: the YAML document)."""
    quotes = []
    base = table["base_region"]
    for name, row in table["instance_types"].items():
        wanted = {base: row["price_per_hour"], **(row.get("region_prices") or {})}
        for region, price in wanted.items():
            answer = client.get_products(
                ServiceCode="AmazonEC2",
                Filters=_filters(instanceType=name, regionCode=region, **INSTANCE_FILTERS),
                MaxResults=100,
            )
            quotes.append(
                Quote(f"{name} {region}", float(price), on_demand_price(answer["PriceList"], "Hrs"))
            )
    for key, filters in STORAGE_FILTERS.items():
        current = (table.get("storage_prices") or {}).get(key)
        if current is None:
            continue
        answer = client.get_products(
            ServiceCode="AmazonEC2",
            Filters=_filters(regionCode=base, **filters),
            MaxResults=100,
        )
        quotes.append(Quote(key, float(current), on_demand_price(answer["PriceList"], "GB-Mo")))
    return quotes


def _number(value: float) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".")


def rewrite(text: str, quotes: Iterable[Quote], base_region: str, today: dt.date | None) -> str:
    """The table's text with AWS's prices in place of the old ones and ``prices_as_of``
    ``today`` (None: the date stays); every other character stays (the file is edited, not
    re-dumped)."""
    lines = text.splitlines(keepends=True)
    for quote in quotes:
        if quote.aws is None:
            continue
        if " " not in quote.key:  # a storage price
            pattern = re.compile(rf"(\b{quote.key}:\s*)[0-9.]+")
            lines = [pattern.sub(rf"\g<1>{_number(quote.aws)}", line) for line in lines]
            continue
        name, region = quote.key.split(" ")
        key = "price_per_hour" if region == base_region else re.escape(region)
        pattern = re.compile(rf"(\b{key}:\s*)[0-9.]+")
        inside = False
        for i, line in enumerate(lines):
            if re.match(rf"\s*{re.escape(name)}:", line):
                inside = True
            elif inside and re.match(r"\s*[a-z][a-z0-9-]*\.[a-z0-9]+:", line):
                inside = False  # the next type
            if inside and pattern.search(line):
                lines[i] = pattern.sub(rf"\g<1>{_number(quote.aws)}", line, count=1)
                break
    out = "".join(lines)
    if today is None:
        return out
    return re.sub(r'(?m)^(prices_as_of:\s*)"[0-9-]+"', rf'\g<1>"{today.isoformat()}"', out)


def report(quotes: list[Quote]) -> str:
    rows = [f"{'price':<28}{'table':>12}{'AWS':>12}{'change':>9}"]
    for q in quotes:
        if q.aws is None:
            rows.append(f"{q.key:<28}{q.table:>12.4f}{'none':>12}{'':>9}")
        else:
            change = (q.aws - q.table) / q.table if q.table else 0.0
            rows.append(f"{q.key:<28}{q.table:>12.4f}{q.aws:>12.4f}{change:>+9.1%}")
    return "\n".join(rows)


def main(argv: list[str], *, client: Any = None, today: dt.date | None = None) -> int:
    parser = argparse.ArgumentParser(prog="snh prices", description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", default=str(DEFAULT_INSTANCE_TYPES_PATH))
    parser.add_argument("--write", action="store_true", help="update the file's prices")
    parser.add_argument("--endpoint-url", help="the Price List API's endpoint (tests)")
    args = parser.parse_args(argv)
    path = Path(args.table)
    load_instance_types(path)  # a table the hub would refuse is refused here too
    text = path.read_text(encoding="utf-8")
    table = yaml.safe_load(text)
    client = client or boto3.client(
        "pricing", region_name=PRICING_REGION, endpoint_url=args.endpoint_url
    )
    quotes = fetch(client, table)
    print(report(quotes))
    missing = [q.key for q in quotes if q.aws is None]
    if missing:
        print(f"AWS returned no single price for: {', '.join(missing)} (left as they are)",
              file=sys.stderr)  # fmt: skip
    if args.write:
        today = today or dt.datetime.now(dt.UTC).date()
        # the table's date says when its prices were taken: not today while some are older
        dated = None if missing else today
        path.write_text(rewrite(text, quotes, table["base_region"], dated), encoding="utf-8")
        load_instance_types(path)
        print(f"wrote {path}" + (f" (prices_as_of {today.isoformat()})" if dated else ""))
    return 1 if missing else 0
