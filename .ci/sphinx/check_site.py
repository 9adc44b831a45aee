"""Check a built site: every internal link and image resolves to a file in it (and a link's #anchor to an id on
that page), and no page or stylesheet loads anything from another host (there is no network to load it from).

Usage: python .ci/sphinx/check_site.py SITE_DIR
A link into nbdev's doc site (doc_host + doc_baseurl in settings.ini) is reported too: prepare.py points those at the
local pages, so one left over is a symbol link whose page was not found. Links to other sites are not followed.
Exit status 1, with one line per problem, if anything is wrong.
"""
import re, sys
from configparser import ConfigParser
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

LOADS = {'img': 'src', 'script': 'src', 'iframe': 'src', 'source': 'src', 'video': 'src', 'audio': 'src',
         'embed': 'src', 'link': 'href'}  # attributes whose URL the browser fetches by itself


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.refs = set(), []  # refs: (tag, url)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.ids.update(v for k, v in attrs if k in ('id', 'name') and v)
        if tag == 'link' and not {'stylesheet', 'icon', 'preload', 'manifest'} & set((a.get('rel') or '').split()):
            tag = 'a'  # <link rel="next|prev|search|index">: navigation, checked like a link
        if tag == 'a' and a.get('href'): self.refs.append((tag, a['href']))
        elif tag in LOADS and a.get(LOADS[tag]): self.refs.append((tag, a[LOADS[tag]]))


def parse(path: Path) -> Page:
    p = Page(); p.feed(path.read_text(encoding='utf-8', errors='replace')); return p


def nbdev_doc_site() -> str:
    ini = ConfigParser(delimiters=['='])
    ini.read(Path(__file__).resolve().parents[2]/'settings.ini', encoding='utf-8')
    cfg = ini['DEFAULT']
    return cfg.get('doc_host', '').rstrip('/') + '/' + cfg.get('doc_baseurl', '').strip('/') + '/'


def check(site: Path, placeholders=()):
    site = site.resolve()
    pages = {p: parse(p) for p in sorted(site.rglob('*.html'))}
    problems = []
    for page, parsed in pages.items():
        name = page.relative_to(site).as_posix()
        for tag, url in parsed.refs:
            if url.startswith(tuple(placeholders)):
                problems.append(f'{name}: link into nbdev\'s doc site that matched no page here: {url}'); continue
            parts = urlsplit(url)
            if parts.scheme in ('mailto', 'javascript', 'data', 'tel'): continue
            if parts.scheme or url.startswith('//'):
                if tag != 'a': problems.append(f'{name}: <{tag}> loads {url} from another host (no network)')
                continue
            target = page if not parts.path else (page.parent/unquote(parts.path)).resolve()
            if target.is_dir(): target = target/'index.html'
            if site not in target.parents or not target.is_file():
                problems.append(f'{name}: <{tag}> {url}: no such file in the site'); continue
            if tag == 'a' and parts.fragment and target.suffix == '.html':
                ids = (pages.get(target) or parse(target)).ids
                if unquote(parts.fragment) not in ids: problems.append(f'{name}: {url}: no id "{parts.fragment}" there')
    for css in sorted(site.rglob('*.css')):
        for url in re.findall(r'url\(\s*[\'"]?((?:https?:)?//[^)\'"]+)', css.read_text(encoding='utf-8', errors='replace')):
            problems.append(f'{css.relative_to(site).as_posix()}: loads {url} from another host (no network)')
    return len(pages), problems


if __name__ == '__main__':
    n, problems = check(Path(sys.argv[1]), [nbdev_doc_site()])
    for p in problems: print(f'docs: ERROR: {p}', file=sys.stderr)
    print(f'docs: checked links and images of {n} pages: ' + (f'{len(problems)} problems' if problems else 'all resolve'))
    sys.exit(1 if problems else 0)
