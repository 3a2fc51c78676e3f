"""Write README.md from nbs/index.ipynb (nbdev-readme needs Quarto, which this project does not install).
Markdown cells are copied; visible code cells become ```python blocks followed by their text output;
cells marked `#| hide` are left out. CI runs it and fails if README.md changes."""
import json, sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
nb = json.loads((root/'nbs'/'index.ipynb').read_text())
parts = ["<!-- generated from nbs/index.ipynb by .ci/readme.py: edit the notebook, not this file -->"]
for c in nb['cells']:
    src = ''.join(c['source']).strip()
    if c['cell_type'] == 'markdown': parts.append(src)
    elif c['cell_type'] == 'code' and src and not any(l.strip().replace(' ', '') in ('#|hide',) for l in src.splitlines()):
        parts.append(f"```python\n{src}\n```")
        text = ''.join(''.join(o.get('text', '')) or ''.join(o.get('data', {}).get('text/plain', '')) for o in c.get('outputs', []))
        if text.strip(): parts.append(f"```\n{text.rstrip()}\n```")
out = '\n\n'.join(parts) + '\n'
(root/'README.md').write_text(out)
