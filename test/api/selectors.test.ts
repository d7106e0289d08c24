/** Label selectors: the map form resources use and kubectl's `-l` text form. */
import { t } from 'tap';

import { MeshError } from '../../src/errors';
import { labelSelectorMatches, matchesSelectorText, parseLabelSelector, requirementsMatch, type LabelRequirement } from '../../src/api';

t.test('labelSelectorMatches', async (t) => {
  const cases: [Record<string, string>, Record<string, string> | undefined, boolean][] = [
    [{ app: 'web' }, { app: 'web', tier: 'front' }, true],
    [{ app: 'web', tier: 'front' }, { app: 'web', tier: 'front' }, true],
    [{ app: 'web', tier: 'back' }, { app: 'web', tier: 'front' }, false],
    [{ app: 'web' }, { tier: 'front' }, false],
    [{ app: 'web' }, undefined, false],
    [{ app: '' }, { app: '' }, true],
    [{ app: '' }, {}, false],
    [{}, undefined, true],
    [{}, { app: 'web' }, true],
    // inherited properties are not labels
    [{ toString: 'x' }, {}, false],
  ];
  for (const [selector, labels, want] of cases) {
    t.equal(labelSelectorMatches(selector, labels), want, `${JSON.stringify(selector)} vs ${JSON.stringify(labels)}`);
  }
});

t.test('parseLabelSelector: kubectl syntax', async (t) => {
  const cases: [string, LabelRequirement[]][] = [
    ['', []],
    ['  ', []],
    ['app=web', [{ key: 'app', op: '=', values: ['web'] }]],
    ['app==web', [{ key: 'app', op: '=', values: ['web'] }]],
    ['app=', [{ key: 'app', op: '=', values: [''] }]],
    [
      'app=web,tier!=db,env in (a,b),!legacy',
      [
        { key: 'app', op: '=', values: ['web'] },
        { key: 'tier', op: '!=', values: ['db'] },
        { key: 'env', op: 'in', values: ['a', 'b'] },
        { key: 'legacy', op: '!exists', values: [] },
      ],
    ],
    [
      ' env notin ( a , b ) , release , app.kubernetes.io/name = web ',
      [
        { key: 'env', op: 'notin', values: ['a', 'b'] },
        { key: 'release', op: 'exists', values: [] },
        { key: 'app.kubernetes.io/name', op: '=', values: ['web'] },
      ],
    ],
    ['in in (in)', [{ key: 'in', op: 'in', values: ['in'] }]],
  ];
  for (const [text, want] of cases) t.strictSame(parseLabelSelector(text), want, JSON.stringify(text));
});

t.test('parseLabelSelector: bad syntax is a MeshError naming the position and the syntax', async (t) => {
  const syntax = '(syntax: key=value, key!=value, key in (a,b), key notin (a,b), key, !key)';
  const cases: [string, string][] = [
    [',', 'expected a label key at position 1'],
    ['app=web,', 'expected a label key at position 9'],
    ['app in ()', 'expected a value in the in list at position 9'],
    ['app in (a', 'expected , or ) in the value list at position 10'],
    ['app in a', 'expected ( after in at position 8'],
    ['app=a=b', 'expected , between requirements at position 6'],
    ['app web', 'expected =, !=, in or notin after "app" at position 5'],
    ['a>1', 'operator > is not supported at position 2'],
    ['!', 'expected a label key at position 2'],
    ['Bad_Key_=x', 'invalid label key "Bad_Key_" at position 1'],
    ['app=not/ok', 'invalid label value "not/ok" at position 5'],
    ['app in (a,-b)', 'invalid label value "-b" at position 11'],
  ];
  for (const [text, why] of cases) {
    let err: unknown;
    try {
      parseLabelSelector(text);
    } catch (e) {
      err = e;
    }
    t.type(err, MeshError, `${text}: a MeshError`);
    t.equal((err as MeshError).code, 'NM_ERR_INVALID_SELECTOR', `${text}: code`);
    t.equal((err as MeshError).message, `label selector ${JSON.stringify(text)}: ${why} ${syntax}`, text);
  }
});

t.test('matchesSelectorText: kubectl meaning', async (t) => {
  const web = { app: 'web', tier: 'front', env: 'a' };
  const cases: [string, Record<string, string> | undefined, boolean][] = [
    ['', web, true],
    ['', undefined, true],
    ['app=web', web, true],
    ['app=db', web, false],
    ['app!=db', web, true],
    ['app!=web', web, false],
    // != and notin match objects without the key, as in kubectl
    ['owner!=x', web, true],
    ['owner notin (x)', web, true],
    ['owner in (x)', web, false],
    ['env in (a,b)', web, true],
    ['env in (b,c)', web, false],
    ['env notin (a,b)', web, false],
    ['tier', web, true],
    ['owner', web, false],
    ['!owner', web, true],
    ['!tier', web, false],
    ['app=web,tier!=db,env in (a,b),!legacy', web, true],
    ['app=web,tier!=db,env in (a,b),!app', web, false],
    ['app=', { app: '' }, true],
    ['app=', {}, false],
    ['app', undefined, false],
  ];
  for (const [text, labels, want] of cases) t.equal(matchesSelectorText(text, labels), want, `${text} on ${JSON.stringify(labels)}`);
  t.throws(() => matchesSelectorText('app=(', web), { code: 'NM_ERR_INVALID_SELECTOR' }, 'bad text throws');
  t.equal(requirementsMatch([], undefined), true, 'no requirements match everything');
});
