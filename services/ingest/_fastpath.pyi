from collections.abc import Callable, Sequence

class Builder:
    def __init__(
        self,
        *,
        fields: tuple[bytes | None, ...],
        source: str,
        candidate: type,
        is_nfc: Callable[[str], bool],
        parse_time: Callable[[object, int], int | None],
        find_entities: Callable[[str], Sequence[tuple[str, str, int, int]]] | None,
        max_chars: int,
        max_record: int,
        skew_ns: int,
        cashtags: bool,
        strip_html: bool,
    ) -> None: ...
    def build(self, lines: list[bytes], now_ns: int, /) -> tuple[list[object], list[int]]: ...

NFC_TABLE_UNICODE_VERSION: str
