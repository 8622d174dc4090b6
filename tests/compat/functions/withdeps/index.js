const isNumber = require('is-number');
exports.main = async (event) => ({ isNumber: isNumber(event.value) });
