"""The [gmail] keys."""

from __future__ import annotations

import pytest

from sesmail_gateway.config import ConfigError, load_mapping


def test_refresh_token_lifetime_takes_a_duration_and_zero_means_never() -> None:
    assert load_mapping({}).gmail.refresh_token_lifetime == 7 * 86400
    assert load_mapping({"gmail": {"refresh_token_lifetime": "6d"}}).gmail.refresh_token_lifetime == 6 * 86400
    assert load_mapping({"gmail": {"refresh_token_lifetime": "0"}}).gmail.refresh_token_lifetime == 0
    with pytest.raises(ConfigError, match="gmail.refresh_token_lifetime"):
        load_mapping({"gmail": {"refresh_token_lifetime": "soon"}})
    with pytest.raises(ConfigError, match="delivery.backoff_base"):
        load_mapping({"delivery": {"backoff_base": "0"}})


@pytest.mark.parametrize(("key", "value"), [
    ("label_ids", [""]), ("api_endpoint", "gmail.example"), ("token_uri", "ftp://x/token"),
    ("tokens", "s3://bucket"),
])
def test_bad_gmail_values_name_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"gmail.{key}"):
        load_mapping({"gmail": {key: value}})
