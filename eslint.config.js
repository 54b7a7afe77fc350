import neostandard from 'neostandard'

export default [
  ...neostandard({
    ts: true,
    ignores: ['dist/**', 'coverage/**', '.tap/**', 'tmp/**', 'artifacts/**']
  }),
  {
    rules: {
      // `void app.register(...)` marks a promise that is awaited later (by app.ready()).
      'no-void': ['error', { allowAsStatement: true }]
    }
  }
]
