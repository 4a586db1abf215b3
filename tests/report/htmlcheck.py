"""An independent reader of rendered HTML (the standard library's parser), for structural checks."""

from __future__ import annotations

from html.parser import HTMLParser


class Page(HTMLParser):
    """Collects tags with their attributes, the text, headings and tables of an HTML document."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.headings: list[int] = []
        self.tables: list[dict] = []
        self._stack: list[dict] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self.headings.append(int(tag[1]))
        if tag == "table":
            self._stack.append({"th": 0, "td": 0, "caption": False, "rows": 0})
        elif self._stack and tag in ("th", "td"):
            self._stack[-1][tag] += 1
        elif self._stack and tag == "caption":
            self._stack[-1]["caption"] = True
        elif self._stack and tag == "tr":
            self._stack[-1]["rows"] += 1

    def handle_endtag(self, tag):
        if tag == "table" and self._stack:
            self.tables.append(self._stack.pop())

    def handle_data(self, data):
        self.text.append(data)

    @property
    def all_text(self) -> str:
        return "".join(self.text)

    def find(self, tag: str) -> list[dict]:
        return [a for t, a in self.tags if t == tag]

    def urls(self) -> list[str]:
        return [v for _, a in self.tags for k, v in a.items() if k in ("src", "href", "srcset", "action", "poster")
                and v is not None]
