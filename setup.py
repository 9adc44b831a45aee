"""Packaging for mdf_loss: every setting comes from settings.ini, the nbdev 2 way."""
from configparser import ConfigParser
from pathlib import Path

import setuptools

here = Path(__file__).parent
config = ConfigParser(delimiters=['='])
config.read(here / 'settings.ini', encoding='utf-8')
cfg = config['DEFAULT']

for key in 'version description keywords author author_email license min_python lib_name'.split():
    if key not in cfg: raise KeyError(f'settings.ini lacks the {key!r} setting')

def reqs(key): return cfg.get(key, '').split()
requirements = reqs('requirements')  # the core: the loss, phase-1 training and the command line
extras = {name: reqs(f'{name}_requirements') for name in ('widgets', 'experiments', 'docs')}
# Sphinx 9 needs Python 3.11; on 3.10 the dev extra installs everything but the docs tooling.
docs_311 = [f'{r}; python_version >= "3.11"' for r in extras['docs']]
extras['all'] = sorted(set(extras['widgets'] + extras['experiments']))
extras['dev'] = sorted(set(reqs('dev_requirements') + extras['all'])) + docs_311
scripts = [s.strip() for s in cfg.get('console_scripts', '').split('\n') if s.strip()]
min_python = cfg['min_python']
licenses = {'bsd3': ('BSD-3-Clause', 'License :: OSI Approved :: BSD License')}
license_name, license_classifier = licenses[cfg['license']]

setuptools.setup(
    name=cfg['lib_name'].replace('_', '-'),
    version=cfg['version'],
    description=cfg['description'],
    long_description=(here / 'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    keywords=cfg['keywords'],
    author=cfg['author'],
    author_email=cfg['author_email'],
    license=license_name,
    classifiers=[license_classifier, 'Programming Language :: Python :: 3',
                 'Topic :: Scientific/Engineering :: Image Processing'],
    packages=setuptools.find_packages(include=[cfg['lib_name'], cfg['lib_name'] + '.*']),
    package_data={cfg['lib_name']: ['assets/*', 'py.typed']},
    license_files=['LICENSE'],
    include_package_data=True,
    python_requires=f'>={min_python}',
    install_requires=requirements,
    extras_require=extras,
    entry_points={'console_scripts': scripts, 'nbdev': [f"{cfg['lib_name']}={cfg['lib_name']}._modidx:d"]},
    zip_safe=False,
)
